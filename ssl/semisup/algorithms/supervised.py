"""Supervised baseline: the labeled loss only, same network, schedule and EMA."""
from __future__ import annotations

from . import register
from .base import Algorithm, StepBatch, StepContext, StepOutput, Views, supervised_loss


@register
class Supervised(Algorithm):
    name = "supervised"
    display_name = "Supervised"
    reference = "semilearn 0.3.2 (its `supervised` baseline on the labeled split)"
    hyperparameters = "{}"
    views = Views(labeled=("weak",), unlabeled=())

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,) = batch.labeled.views
        loss = supervised_loss(ctx.network(x_lb).logits, batch.labeled.labels)
        return StepOutput(loss, {"loss_sup": loss.detach()})
