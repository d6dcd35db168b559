"""Supervised baseline: the labeled loss only, same network, schedule and EMA."""
from __future__ import annotations

from . import register
from .base import Algorithm, StepBatch, StepOutput, supervised_loss


@register
class Supervised(Algorithm):
    name = "supervised"
    uses_unlabeled = False
    second_view = None

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        loss = supervised_loss(model(batch.labeled_images), batch.labels)
        return StepOutput(loss, {"loss_sup": loss.detach()})
