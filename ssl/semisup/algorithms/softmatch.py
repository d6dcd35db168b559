"""SoftMatch (Chen et al., 2023): every pseudo-label counts, weighted by a truncated Gaussian of
its confidence, w = exp(-(min(q - mu, 0))^2 / (2 var / n_sigma^2)), with mu and var EMAs of the
confidence after uniform distribution alignment. The pseudo-label itself is the argmax of the raw
weak prediction."""
from __future__ import annotations

import torch

from . import register
from .components import DistributionAlignment
from .masking import confidence_and_pseudo_labels, softmatch_update, softmatch_weights
from .weak_to_strong import PseudoLabels, WeakToStrong


@register
class SoftMatch(WeakToStrong):
    name = "softmatch"
    display_name = "SoftMatch"
    figures = ("selection",)
    reference = "semilearn 0.3.2"
    hyperparameters = """
      ema_momentum: {type: number, minimum: 0, exclusiveMaximum: 1,
                     description: EMA momentum of the confidence mean and variance.}
      n_sigma: {type: number, exclusiveMinimum: 0,
                description: Width of the Gaussian weight in standard deviations.}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      distribution_alignment: {type: boolean,
                               description: Align weak predictions to the uniform prior (weights only).}
    """
    state_names = ("mu", "var")

    def __init__(self, *, ema_momentum: float, n_sigma: float, distribution_alignment: bool, **base):
        super().__init__(**base)
        self.ema_momentum, self.n_sigma = ema_momentum, n_sigma
        self.mu = torch.tensor(1.0 / self.num_classes)
        self.var = torch.tensor(1.0)
        # aligns the weak predictions to the uniform prior before the weights are computed
        self.alignment = (DistributionAlignment(self.num_classes, ema_momentum)
                          if distribution_alignment else None)

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        probs_w = torch.softmax(logits_weak.float(), dim=-1)
        probs_for_weights = self.alignment(probs_w) if self.alignment else probs_w
        confidence, _ = confidence_and_pseudo_labels(probs_for_weights)
        self.mu, self.var = softmatch_update(self.mu, self.var, confidence, self.ema_momentum)
        weights = softmatch_weights(confidence, self.mu, self.var, self.n_sigma)
        pseudo_labels = probs_w.argmax(dim=-1)
        return PseudoLabels(pseudo_labels, weights, pseudo_labels,
                            {"mu": self.mu.clone(), "var": self.var.clone()})
