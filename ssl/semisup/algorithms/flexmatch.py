"""FlexMatch (Zhang et al., 2021): FixMatch with class-wise thresholds tau * M(beta_c) from the
per-sample record sigma of each unlabeled sample's last confident class (curriculum pseudo-labelling)."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   selection_stats, supervised_loss)
from .masking import (class_threshold_mask, confidence_and_pseudo_labels, flexmatch_record,
                      flexmatch_thresholds)


@register
class FlexMatch(Algorithm):
    name = "flexmatch"
    state_names = ("sigma",)

    def __init__(self, *, tau: float, lambda_u: float, threshold_warmup: bool, **base):
        super().__init__(**base)
        self.tau, self.lambda_u, self.threshold_warmup = tau, lambda_u, threshold_warmup
        self.sigma = torch.full((self.num_unlabeled,), -1, dtype=torch.long)

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        loss_sup = supervised_loss(logits_lb, batch.labels)

        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_w.detach(), -1))
        # Mask from the counts before this batch, then record this batch's confident predictions.
        thresholds = flexmatch_thresholds(self.sigma, self.num_classes, self.tau, self.threshold_warmup)
        mask = class_threshold_mask(confidence, pseudo_labels, thresholds)
        flexmatch_record(self.sigma, batch.unlabeled_indices, confidence, pseudo_labels, self.tau)
        loss_unsup = (cross_entropy_per_sample(logits_s, pseudo_labels) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold_mean": thresholds.mean(), "threshold_min": thresholds.min()}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
