"""FreeMatch (Wang et al., 2023): self-adaptive thresholds. A global confidence tau_g and class
probabilities p_model (EMAs over the weak predictions) give local thresholds
tau_c = tau_g * p_model_c / max p_model; a fairness loss keeps the selected strong predictions
spread over the classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .masking import (class_threshold_mask, confidence_and_pseudo_labels, freematch_thresholds,
                      freematch_update)
from .weak_to_strong import PseudoLabels, WeakToStrong


def sum_normalise(values: Tensor) -> Tensor:
    return values / values.sum().clamp(min=1e-12)


def inverse_or_zero(values: Tensor) -> Tensor:
    """1 / x where x > 0, else 0 (classes never predicted get no weight)."""
    return torch.where(values > 0, 1.0 / values.clamp(min=1e-12), torch.zeros_like(values))


def freematch_fairness_loss(logits_strong: Tensor, mask: Tensor, p_model: Tensor,
                            label_hist: Tensor) -> Tensor:
    """sum_c SumNorm(p_model / hist)_c * log SumNorm(mean_masked(p_s) / hist_s)_c.

    hist_s is the histogram of the selected samples' strong predictions; 0 when none is selected
    (computed without indexing by the mask, so nothing is read back to the host).
    """
    probs_s = torch.softmax(logits_strong, dim=-1)
    mask = mask.detach()
    n_selected = mask.sum()
    predicted = F.one_hot(probs_s.detach().argmax(dim=-1), probs_s.shape[-1]).to(probs_s.dtype)
    hist_s = (predicted * mask[:, None]).sum(dim=0) / n_selected.clamp(min=1)
    mean_probs_s = (probs_s * mask[:, None]).sum(dim=0) / n_selected.clamp(min=1)

    target = sum_normalise(p_model * inverse_or_zero(label_hist))
    modulated = sum_normalise(mean_probs_s * inverse_or_zero(hist_s))
    loss = (target * torch.log(modulated + 1e-12)).sum()
    return torch.where(n_selected > 0, loss, torch.zeros_like(loss))


@register
class FreeMatch(WeakToStrong):
    name = "freematch"
    display_name = "FreeMatch"
    figures = ("selection",)
    reference = "semilearn 0.3.2"
    hyperparameters = """
      ema_momentum: {type: number, minimum: 0, exclusiveMaximum: 1,
                     description: EMA momentum of the global and class-wise statistics.}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      lambda_fairness: {description: Weight of the fairness loss., type: number, minimum: 0}
    """
    state_names = ("tau_global", "p_model", "label_hist")

    def __init__(self, *, ema_momentum: float, lambda_fairness: float, **base):
        super().__init__(**base)
        self.ema_momentum, self.lambda_fairness = ema_momentum, lambda_fairness
        self.tau_global = torch.tensor(1.0 / self.num_classes)
        self.p_model = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.label_hist = torch.full((self.num_classes,), 1.0 / self.num_classes)

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        probs_w = torch.softmax(logits_weak.float(), dim=-1)
        # Fold this batch into the running statistics first, then threshold it.
        self.tau_global, self.p_model, self.label_hist = freematch_update(
            self.tau_global, self.p_model, self.label_hist, probs_w, self.ema_momentum)
        thresholds = freematch_thresholds(self.tau_global, self.p_model)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = class_threshold_mask(confidence, pseudo_labels, thresholds)
        return PseudoLabels(pseudo_labels, mask, pseudo_labels,
                            {"tau_global": self.tau_global.clone(),
                             "threshold_mean": thresholds.mean(), "threshold_min": thresholds.min()})

    def extra_loss(self, logits_strong, pseudo: PseudoLabels) -> Tensor:
        loss_fairness = freematch_fairness_loss(logits_strong, pseudo.mask, self.p_model,
                                                self.label_hist)
        pseudo.stats["loss_fairness"] = loss_fairness.detach()
        return self.lambda_fairness * loss_fairness
