"""UDA (Xie et al., 2020): soft targets where q >= tau, soft cross-entropy of the strong view
against them; optional Training Signal Annealing (TSA) on the labeled loss.

Two places where the references disagree are parameters (ALGORITHMS.md):
  sharpen_targets  true: targets softmax(logits_w / T) (the paper, TorchSSL); false: the plain
                   weak probabilities, T unused (semilearn 0.3.2 as it runs: its soft pseudo-label
                   hook is called with probabilities and skips the temperature).
  tsa_rule         true_class: drop a labeled sample whose true-class probability exceeds eta_t
                   (the paper, TorchSSL); max_probability: whose largest probability does
                   (semilearn 0.3.2).
"""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   scalar, selection_stats)
from .masking import (TSA_SCHEDULES, confidence_and_pseudo_labels, fixed_threshold_mask, sharpen,
                      tsa_threshold)

TSA_RULES = ("true_class", "max_probability")


@register
class UDA(Algorithm):
    name = "uda"

    def __init__(self, *, tau: float, T: float, lambda_u: float, tsa_schedule: str, tsa_rule: str,
                 sharpen_targets: bool, **base):
        super().__init__(**base)
        if tsa_schedule not in TSA_SCHEDULES:
            raise ValueError(f"uda: tsa_schedule {tsa_schedule!r} is not one of {TSA_SCHEDULES}")
        if tsa_rule not in TSA_RULES:
            raise ValueError(f"uda: tsa_rule {tsa_rule!r} is not one of {TSA_RULES}")
        self.tau, self.T, self.lambda_u = tau, T, lambda_u
        self.tsa_schedule, self.tsa_rule, self.sharpen_targets = tsa_schedule, tsa_rule, sharpen_targets

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        # TSA: keep a labeled sample while its probability (per tsa_rule) is at most eta_t.
        eta = tsa_threshold(self.tsa_schedule, step / self.total_steps, self.num_classes)
        probs_lb = torch.softmax(logits_lb.detach(), -1)
        if self.tsa_rule == "true_class":
            tsa_probs = probs_lb.gather(1, batch.labels[:, None])[:, 0]
        else:
            tsa_probs = probs_lb.max(dim=-1).values
        keep_labeled = (tsa_probs <= eta).float()
        loss_sup = (cross_entropy_per_sample(logits_lb, batch.labels) * keep_labeled).mean()

        logits_w = logits_w.detach()
        probs_w = torch.softmax(logits_w, dim=-1)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = fixed_threshold_mask(confidence, self.tau)
        targets = sharpen(logits_w, self.T) if self.sharpen_targets else probs_w
        loss_unsup = (cross_entropy_per_sample(logits_s, targets) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": scalar(self.tau, loss_sup), "tsa_threshold": scalar(eta, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
