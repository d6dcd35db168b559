"""Pseudo-Label (Lee, 2013), as in USB: hard pseudo-labels on the same weak logits where
q >= tau, weight ramped up linearly over the first 40 % of training. mu = 1 is set through the
training config (`uratio`), not here. The unlabeled pass runs with BatchNorm statistics frozen."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample,
                   frozen_batchnorm_statistics, scalar, selection_stats, supervised_loss)
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask, linear_rampup


@register
class PseudoLabel(Algorithm):
    name = "pseudolabel"
    second_view = None

    def __init__(self, *, tau: float, lambda_u: float, rampup_fraction: float, **base):
        super().__init__(**base)
        self.tau, self.lambda_u, self.rampup_fraction = tau, lambda_u, rampup_fraction

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        loss_sup = supervised_loss(model(batch.labeled_images), batch.labels)
        with frozen_batchnorm_statistics(model):
            logits_w = model(batch.weak_images)

        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_w.detach(), -1))
        mask = fixed_threshold_mask(confidence, self.tau)
        loss_unsup = (cross_entropy_per_sample(logits_w, pseudo_labels) * mask).mean()
        weight = self.lambda_u * linear_rampup(step, self.total_steps, self.rampup_fraction)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": scalar(self.tau, loss_sup), "unsup_weight": scalar(weight, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + weight * loss_unsup, stats)
