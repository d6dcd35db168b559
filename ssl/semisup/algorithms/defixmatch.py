"""DeFixMatch (Schmutz et al., 2023), as semilearn 0.3.2 runs it: FixMatch debiased by
subtracting the same unsupervised loss computed on the labeled images, so that a wrong
pseudo-labelling rule cannot pull the model away from what the labels alone would give.
loss = (H(y, p(lb weak)) + H(y, p(lb strong))) / 2
       + lambda_u * (mean mask H(yhat, p(ulb strong)) - mean mask_lb H(yhat_lb, p(lb strong))),
where yhat and yhat_lb are the argmax of the model's own weak predictions (on the labeled images
too: the true label is not used in the subtracted term) and the masks are [q >= tau].

As in semilearn: the labeled weak, labeled strong, unlabeled weak and unlabeled strong images are
one forward pass (one BatchNorm batch); both terms average over their whole batch.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   forward_views, scalar, selection_stats, supervised_loss)
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask


def masked_pseudo_label_loss(logits_weak, logits_strong, tau: float):
    """mean_i [q_i >= tau] H(argmax p_w_i, p_s_i), with the mask and the pseudo-labels."""
    confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_weak.detach(), -1))
    mask = fixed_threshold_mask(confidence, tau)
    return (cross_entropy_per_sample(logits_strong, pseudo_labels) * mask).mean(), mask, pseudo_labels


@register
class DeFixMatch(Algorithm):
    name = "defixmatch"
    display_name = "DeFixMatch"
    reference = "semilearn 0.3.2"
    figures = ("selection",)
    foreign_keys: ClassVar[dict[str, str]] = {"T": (
        "semilearn's DeFixMatch `T` (0.5 in its configs) sharpens soft pseudo-labels only and "
        "is unused with the hard labels it trains on (hard_label: true), so it is not a "
        "parameter here. Remove algorithms.defixmatch.T")}
    hyperparameters = """
      tau: {type: number, minimum: 0, maximum: 1,
            description: Confidence threshold (on the labeled and the unlabeled images).}
      lambda_u: {type: number, minimum: 0,
                 description: Weight of the debiased unsupervised loss (unlabeled term minus labeled term).}
    """
    views = Views(labeled=("weak", "strong"), unlabeled=("weak", "strong"))

    def __init__(self, *, tau: float, lambda_u: float, **base):
        super().__init__(**base)
        self.tau, self.lambda_u = tau, lambda_u

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb, x_lb_s), (x_w, x_s) = batch.labeled.views, batch.unlabeled.views
        logits_lb, logits_lb_s, logits_w, logits_s = forward_views(ctx.network, x_lb, x_lb_s, x_w, x_s)
        labels = batch.labeled.labels
        loss_sup = (supervised_loss(logits_lb, labels) + supervised_loss(logits_lb_s, labels)) / 2

        loss_unsup, mask, pseudo_labels = masked_pseudo_label_loss(logits_w, logits_s, self.tau)
        loss_anti, mask_lb, _ = masked_pseudo_label_loss(logits_lb, logits_lb_s, self.tau)

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_anti": loss_anti.detach(), "mask_rate_labeled": mask_lb.mean(),
                 "threshold": scalar(self.tau, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss_sup + self.lambda_u * (loss_unsup - loss_anti), stats)
