"""SoftMatch (Chen et al., 2023): every pseudo-label counts, weighted by a truncated Gaussian of
its confidence, w = exp(-(min(q - mu, 0))^2 / (2 var / n_sigma^2)), with mu and var EMAs of the
confidence after uniform distribution alignment. The pseudo-label itself is the argmax of the raw
weak prediction."""
from __future__ import annotations

import torch

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   selection_stats, supervised_loss)
from .masking import (confidence_and_pseudo_labels, distribution_alignment, ema_update,
                      softmatch_update, softmatch_weights)


@register
class SoftMatch(Algorithm):
    name = "softmatch"
    state_names = ("mu", "var", "p_model", "p_model_started")

    def __init__(self, *, ema_momentum: float, n_sigma: float, lambda_u: float,
                 distribution_alignment: bool, **base):
        super().__init__(**base)
        self.ema_momentum, self.n_sigma, self.lambda_u = ema_momentum, n_sigma, lambda_u
        self.distribution_alignment = distribution_alignment
        self.mu = torch.tensor(1.0 / self.num_classes)
        self.var = torch.tensor(1.0)
        # The distribution-alignment estimate of the mean weak prediction; it starts at the first
        # batch's mean (`p_model_started` False until then).
        self.p_model = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.p_model_started = False

    def aligned(self, probs_w):
        """Fold the batch into p_model, then align the batch to the uniform prior."""
        batch_mean = probs_w.mean(dim=0)
        self.p_model = (ema_update(self.p_model, batch_mean, self.ema_momentum)
                        if self.p_model_started else batch_mean)
        self.p_model_started = True
        uniform = torch.full_like(self.p_model, 1.0 / self.num_classes)
        return distribution_alignment(probs_w, self.p_model, uniform)

    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        loss_sup = supervised_loss(logits_lb, batch.labels)

        probs_w = torch.softmax(logits_w.detach().float(), dim=-1)
        probs_for_weights = self.aligned(probs_w) if self.distribution_alignment else probs_w
        confidence, _ = confidence_and_pseudo_labels(probs_for_weights)
        self.mu, self.var = softmatch_update(self.mu, self.var, confidence, self.ema_momentum)
        weights = softmatch_weights(confidence, self.mu, self.var, self.n_sigma)
        pseudo_labels = probs_w.argmax(dim=-1)
        loss_unsup = (cross_entropy_per_sample(logits_s, pseudo_labels) * weights).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "mu": self.mu.clone(), "var": self.var.clone()}
        stats.update(selection_stats(weights, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
