"""FixMatch (Sohn et al., 2020): hard pseudo-labels from the weak view where q >= tau,
cross-entropy of the strong view against them."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   scalar, selection_stats, supervised_loss)
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask


@register
class FixMatch(Algorithm):
    name = "fixmatch"

    def __init__(self, *, tau: float, lambda_u: float, **base):
        super().__init__(**base)
        self.tau, self.lambda_u = tau, lambda_u

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        loss_sup = supervised_loss(logits_lb, batch.labels)

        probs_w = torch.softmax(logits_w.detach(), dim=-1)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = fixed_threshold_mask(confidence, self.tau)
        loss_unsup = (cross_entropy_per_sample(logits_s, pseudo_labels) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": scalar(self.tau, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
