"""AdaMatch (Berthelot et al., 2022), as semilearn 0.3.2 runs it for semi-supervised learning:
FixMatch with a relative threshold, tau times the mean confidence of the current labeled batch,
and distribution alignment of the weak predictions, p <- p * p_target / p_model renormalised,
where p_model is an EMA of the unlabeled predictions and p_target an EMA of the labeled ones.
Hard pseudo-labels (the argmax of the aligned prediction) train the strong view where its
aligned confidence reaches the threshold.

As in semilearn: the labeled, weak and strong images are one forward pass (one BatchNorm
batch); the threshold uses the labeled predictions before any alignment; p_model starts at the
first batch's mean, p_target at the uniform distribution (with momentum 0.999 it stays close to
it for thousands of steps); both are updated with the batch before it is aligned. The paper's
random logit interpolation and its ramp-up of the unsupervised weight (written for domain
adaptation) are not part of semilearn's AdaMatch and not offered here.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, cross_entropy_per_sample,
                   forward_views, selection_stats, supervised_loss)
from .components import DistributionAlignment
from .masking import confidence_and_pseudo_labels, ema_update


class LabeledTargetAlignment(DistributionAlignment):
    """Distribution alignment whose target is itself a running average: p_target, an EMA (with
    the same momentum) of the labeled predictions from the uniform distribution, saved with
    p_model (semilearn's DistAlignEMAHook with p_target_type 'model')."""

    state_names = (*DistributionAlignment.state_names, "p_target")

    def update(self, probs_unlabeled: Tensor, probs_labeled: Tensor) -> None:
        super().update(probs_unlabeled)
        self.p_target = ema_update(self.p_target, probs_labeled.mean(dim=0), self.momentum)

    def __call__(self, probs_unlabeled: Tensor, probs_labeled: Tensor) -> Tensor:
        """Fold both batches into the running averages, then align the unlabeled one."""
        self.update(probs_unlabeled, probs_labeled)
        return self.align(probs_unlabeled)


def relative_threshold(probs_labeled: Tensor, tau: float) -> Tensor:
    """tau * the mean over the labeled batch of max_c p (a 0-dim tensor)."""
    return tau * probs_labeled.max(dim=-1).values.mean()


@register
class AdaMatch(Algorithm):
    name = "adamatch"
    display_name = "AdaMatch"
    reference = "semilearn 0.3.2"
    figures = ("selection",)
    foreign_keys: ClassVar[dict[str, str]] = {"T": (
        "semilearn's AdaMatch `T` (0.5 in its configs) sharpens soft pseudo-labels only and "
        "is unused with the hard labels it trains on (hard_label: true), so it is not a "
        "parameter here. Remove algorithms.adamatch.T")}
    hyperparameters = """
      tau: {type: number, minimum: 0, maximum: 1,
            description: "Relative confidence threshold: a fraction of the labeled batch's mean confidence."}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      ema_momentum: {type: number, minimum: 0, exclusiveMaximum: 1,
                     description: "EMA momentum of p_model and p_target (semilearn's ema_p)."}
    """

    def __init__(self, *, tau: float, lambda_u: float, ema_momentum: float, **base):
        super().__init__(**base)
        self.tau, self.lambda_u = tau, lambda_u
        self.alignment = LabeledTargetAlignment(self.num_classes, ema_momentum)

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s) = batch.labeled.views, batch.unlabeled.views
        logits_lb, logits_w, logits_s = forward_views(ctx.network, x_lb, x_w, x_s)
        loss_sup = supervised_loss(logits_lb, batch.labeled.labels)

        probs_lb = torch.softmax(logits_lb.detach(), dim=-1)
        probs_w = self.alignment(torch.softmax(logits_w.detach(), dim=-1), probs_lb)
        threshold = relative_threshold(probs_lb, self.tau)
        confidence, pseudo_labels = confidence_and_pseudo_labels(probs_w)
        mask = (confidence >= threshold).float()
        loss_unsup = (cross_entropy_per_sample(logits_s, pseudo_labels) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "threshold": threshold}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
