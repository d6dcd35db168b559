"""FlexMatch (Zhang et al., 2021): FixMatch with class-wise thresholds tau * M(beta_c) from the
per-sample record sigma of each unlabeled sample's last confident class (curriculum pseudo-labelling)."""
from __future__ import annotations

import torch

from . import register
from .masking import (class_threshold_mask, confidence_and_pseudo_labels, flexmatch_record,
                      flexmatch_thresholds)
from .weak_to_strong import PseudoLabels, WeakToStrong


@register
class FlexMatch(WeakToStrong):
    name = "flexmatch"
    display_name = "FlexMatch"
    figures = ("selection",)
    reference = "semilearn 0.3.2"
    hyperparameters = """
      tau: {description: Upper confidence threshold (scaled per class)., type: number, minimum: 0, maximum: 1}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      threshold_warmup: {type: boolean,
                         description: Normalise by max(max_c n_c, n_unused) (threshold warm-up).}
    """
    state_names = ("sigma",)

    def __init__(self, *, tau: float, threshold_warmup: bool, **base):
        super().__init__(**base)
        self.tau, self.threshold_warmup = tau, threshold_warmup
        self.sigma = torch.full((self.num_unlabeled,), -1, dtype=torch.long)

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_weak, -1))
        # Mask from the counts before this batch, then record this batch's confident predictions.
        thresholds = flexmatch_thresholds(self.sigma, self.num_classes, self.tau, self.threshold_warmup)
        mask = class_threshold_mask(confidence, pseudo_labels, thresholds)
        flexmatch_record(self.sigma, unlabeled_indices, confidence, pseudo_labels, self.tau)
        return PseudoLabels(pseudo_labels, mask, pseudo_labels,
                            {"threshold_mean": thresholds.mean(), "threshold_min": thresholds.min()})
