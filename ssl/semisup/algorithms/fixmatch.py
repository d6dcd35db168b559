"""FixMatch (Sohn et al., 2020): hard pseudo-labels from the weak view where q >= tau,
cross-entropy of the strong view against them."""
from __future__ import annotations

from typing import ClassVar

import torch

from . import register
from .base import scalar
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask
from .weak_to_strong import PseudoLabels, WeakToStrong


@register
class FixMatch(WeakToStrong):
    name = "fixmatch"
    display_name = "FixMatch"
    reference = "semilearn 0.3.2"
    figures = ("pseudo_labels", "selection")
    hyperparameters = """
      tau: {description: Confidence threshold., type: number, minimum: 0, maximum: 1}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
    """
    foreign_keys: ClassVar[dict[str, str]] = {"T": (
        "semilearn's FixMatch `T` (0.5 in its configs) sharpens soft pseudo-labels only and is "
        "unused with the hard labels FixMatch uses, so it is not a parameter here; dividing the "
        "logits by T before the threshold would change FixMatch's mask (another method). "
        "Remove algorithms.fixmatch.T")}

    def __init__(self, *, tau: float, **base):
        super().__init__(**base)
        self.tau = tau

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_weak, dim=-1))
        mask = fixed_threshold_mask(confidence, self.tau)
        return PseudoLabels(pseudo_labels, mask, pseudo_labels,
                            {"threshold": scalar(self.tau, logits_weak)})
