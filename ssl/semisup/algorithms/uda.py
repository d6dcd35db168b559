"""UDA (Xie et al., 2020): soft targets softmax(logits_w / T) where q >= tau, soft cross-entropy
of the strong view against them; optional Training Signal Annealing on the labeled loss."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   scalar, selection_stats)
from .masking import (TSA_SCHEDULES, confidence_and_pseudo_labels, fixed_threshold_mask, sharpen,
                      tsa_threshold)


@register
class UDA(Algorithm):
    name = "uda"

    def __init__(self, tau: float = 0.8, T: float = 0.4, lambda_u: float = 1.0,
                 tsa_schedule: str = "none", **base):
        super().__init__(**base)
        if tsa_schedule not in TSA_SCHEDULES:
            raise ValueError(f"uda: tsa_schedule {tsa_schedule!r} is not one of {TSA_SCHEDULES}")
        self.tau, self.T, self.lambda_u, self.tsa_schedule = tau, T, lambda_u, tsa_schedule

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        # TSA (paper's definition): drop labeled samples whose true-class probability exceeds eta_t.
        eta = tsa_threshold(self.tsa_schedule, step / self.total_steps, self.num_classes)
        true_class_probs = torch.softmax(logits_lb.detach(), -1).gather(1, batch.labels[:, None])[:, 0]
        keep_labeled = (true_class_probs <= eta).float()
        loss_sup = (cross_entropy_per_sample(logits_lb, batch.labels) * keep_labeled).mean()

        logits_w = logits_w.detach()
        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_w, dim=-1))
        mask = fixed_threshold_mask(confidence, self.tau)
        targets = sharpen(logits_w, self.T)
        loss_unsup = (cross_entropy_per_sample(logits_s, targets) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": scalar(self.tau, loss_sup), "tsa_threshold": scalar(eta, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
