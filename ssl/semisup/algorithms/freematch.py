"""FreeMatch (Wang et al., 2023): self-adaptive thresholds. A global confidence tau_g and class
probabilities p_model (EMAs over the weak predictions) give local thresholds
tau_c = tau_g * p_model_c / max p_model; a fairness loss keeps the selected strong predictions
spread over the classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   selection_stats, supervised_loss)
from .masking import (class_threshold_mask, confidence_and_pseudo_labels, freematch_thresholds,
                      freematch_update)


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
class FreeMatch(Algorithm):
    name = "freematch"
    state_names = ("tau_global", "p_model", "label_hist")

    def __init__(self, *, ema_momentum: float, lambda_u: float, lambda_fairness: float, **base):
        super().__init__(**base)
        self.ema_momentum, self.lambda_u, self.lambda_fairness = ema_momentum, lambda_u, lambda_fairness
        self.tau_global = torch.tensor(1.0 / self.num_classes)
        self.p_model = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.label_hist = torch.full((self.num_classes,), 1.0 / self.num_classes)

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        loss_sup = supervised_loss(logits_lb, batch.labels)

        probs_w = torch.softmax(logits_w.detach().float(), dim=-1)
        # Fold this batch into the running statistics first, then threshold it.
        self.tau_global, self.p_model, self.label_hist = freematch_update(
            self.tau_global, self.p_model, self.label_hist, probs_w, self.ema_momentum)
        thresholds = freematch_thresholds(self.tau_global, self.p_model)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = class_threshold_mask(confidence, pseudo_labels, thresholds)
        loss_unsup = (cross_entropy_per_sample(logits_s, pseudo_labels) * mask).mean()
        loss_fairness = freematch_fairness_loss(logits_s, mask, self.p_model, self.label_hist)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_fairness": loss_fairness.detach(), "tau_global": self.tau_global.clone(),
                 "threshold_mean": thresholds.mean(), "threshold_min": thresholds.min()}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        loss = loss_sup + self.lambda_u * loss_unsup + self.lambda_fairness * loss_fairness
        return StepOutput(loss, stats)
