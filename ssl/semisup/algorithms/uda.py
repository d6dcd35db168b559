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
from .base import cross_entropy_per_sample, scalar
from .masking import (TSA_SCHEDULES, confidence_and_pseudo_labels, fixed_threshold_mask, sharpen,
                      tsa_threshold)
from .weak_to_strong import PseudoLabels, WeakToStrong

TSA_RULES = ("true_class", "max_probability")


@register
class UDA(WeakToStrong):
    name = "uda"
    display_name = "UDA"
    figures = ("selection",)
    reference = "TorchSSL; semilearn 0.3.2 with tsa_rule max_probability, sharpen_targets false"
    hyperparameters = """
      tau: {description: Confidence threshold., type: number, minimum: 0, maximum: 1}
      T: {type: number, exclusiveMinimum: 0,
          description: "Sharpening temperature of the target (with sharpen_targets)."}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      tsa_schedule: {description: Training signal annealing schedule., enum: [none, linear, exp, log]}
      tsa_rule:
        description: >-
          Which probability TSA compares with its threshold: `true_class` (the paper and
          TorchSSL) or `max_probability` (semilearn 0.3.2).
        enum: [true_class, max_probability]
      sharpen_targets:
        description: >-
          true: targets softmax(logits_w / T) (the paper, TorchSSL); false: the plain weak
          probabilities, T unused (semilearn 0.3.2 as it runs).
        type: boolean
    """

    def __init__(self, *, tau: float, T: float, tsa_schedule: str, tsa_rule: str,
                 sharpen_targets: bool, **base):
        super().__init__(**base)
        if tsa_schedule not in TSA_SCHEDULES:
            raise ValueError(f"uda: tsa_schedule {tsa_schedule!r} is not one of {TSA_SCHEDULES}")
        if tsa_rule not in TSA_RULES:
            raise ValueError(f"uda: tsa_rule {tsa_rule!r} is not one of {TSA_RULES}")
        self.tau, self.T = tau, T
        self.tsa_schedule, self.tsa_rule, self.sharpen_targets = tsa_schedule, tsa_rule, sharpen_targets

    def labeled_loss(self, logits_labeled, labels, step):
        """TSA: keep a labeled sample while its probability (per tsa_rule) is at most eta_t."""
        eta = tsa_threshold(self.tsa_schedule, step / self.total_steps, self.num_classes)
        probs_lb = torch.softmax(logits_labeled.detach(), -1)
        if self.tsa_rule == "true_class":
            tsa_probs = probs_lb.gather(1, labels[:, None])[:, 0]
        else:
            tsa_probs = probs_lb.max(dim=-1).values
        keep_labeled = (tsa_probs <= eta).float()
        loss = (cross_entropy_per_sample(logits_labeled, labels) * keep_labeled).mean()
        return loss, {"tsa_threshold": scalar(eta, loss)}

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        probs_w = torch.softmax(logits_weak, dim=-1)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = fixed_threshold_mask(confidence, self.tau)
        targets = sharpen(logits_weak, self.T) if self.sharpen_targets else probs_w
        return PseudoLabels(targets, mask, pseudo_labels, {"threshold": scalar(self.tau, logits_weak)})
