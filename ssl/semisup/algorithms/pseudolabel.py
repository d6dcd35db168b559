"""Pseudo-Label (Lee, 2013), as in USB: hard pseudo-labels on the same weak logits where
q >= tau, weight ramped up linearly over the first 40 % of training. mu = 1 is set through the
training config (`uratio`), not here. The unlabeled pass runs with BatchNorm statistics frozen."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   frozen_batchnorm_statistics, scalar, selection_stats, supervised_loss)
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask, linear_rampup


@register
class PseudoLabel(Algorithm):
    name = "pseudolabel"
    display_name = "Pseudo-Label"
    figures = ("selection",)
    reference = "semilearn 0.3.2"
    hyperparameters = """
      tau: {description: Confidence threshold., type: number, minimum: 0, maximum: 1}
      lambda_u: {description: Final weight of the unsupervised loss., type: number, minimum: 0}
      rampup_fraction: {type: number, minimum: 0, maximum: 1,
                        description: Linear ramp-up of the weight over this fraction of the steps.}
    """
    views = Views(labeled=("weak",), unlabeled=("weak",))

    def __init__(self, *, tau: float, lambda_u: float, rampup_fraction: float, **base):
        super().__init__(**base)
        self.tau, self.lambda_u, self.rampup_fraction = tau, lambda_u, rampup_fraction

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w,) = batch.labeled.views, batch.unlabeled.views
        loss_sup = supervised_loss(ctx.network(x_lb).logits, batch.labeled.labels)
        with frozen_batchnorm_statistics(ctx.network):
            logits_w = ctx.network(x_w).logits

        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_w.detach(), -1))
        mask = fixed_threshold_mask(confidence, self.tau)
        loss_unsup = (cross_entropy_per_sample(logits_w, pseudo_labels) * mask).mean()
        weight = self.lambda_u * linear_rampup(ctx.step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": scalar(self.tau, loss_sup), "unsup_weight": scalar(weight, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss_sup + weight * loss_unsup, stats)
