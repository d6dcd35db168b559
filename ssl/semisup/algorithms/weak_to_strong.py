"""The weak-to-strong family's shared step (FixMatch, FlexMatch, FreeMatch, SoftMatch, Dash, UDA):
USB's insight that these algorithms differ only in how they pseudo-label the weak view.

  logits_lb, logits_w, logits_s = network([labeled, weak, strong])   (one BatchNorm batch)
  loss_sup   = labeled_loss(logits_lb, labels)                        (UDA: with TSA)
  pseudo     = pseudo_label(logits_w detached)                        (each algorithm's rule)
  loss_unsup = mean_i mask_i H(targets_i, softmax(logits_s_i))        (Dash official: its own mean)
  loss       = loss_sup + lambda_u * loss_unsup (+ extra_loss: FreeMatch's fairness term)

A subclass implements `pseudo_label` and, where its paper says so, overrides one of the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .base import (Algorithm, StepBatch, StepContext, StepOutput, cross_entropy_per_sample,
                   forward_views, selection_stats, supervised_loss)


@dataclass
class PseudoLabels:
    """One unlabeled batch's pseudo-labels.

    targets: what the strong view is trained towards: class indices or probability rows.
    mask:    each sample's weight, in [0, 1] (hard masks are 0/1 floats).
    labels:  the hard pseudo-labels (argmax), for the selection statistics.
    stats:   the rule's own statistics (thresholds, running estimates), 0-dim tensors.
    """

    targets: Tensor
    mask: Tensor
    labels: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class WeakToStrong(Algorithm):
    """Base of the family; see the module docstring for the step."""

    def __init__(self, *, lambda_u: float, **base):
        super().__init__(**base)
        self.lambda_u = lambda_u

    def pseudo_label(self, logits_weak: Tensor, step: int, unlabeled_indices: Tensor) -> PseudoLabels:
        raise NotImplementedError

    def labeled_loss(self, logits_labeled: Tensor, labels: Tensor, step: int
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        return supervised_loss(logits_labeled, labels), {}

    def unlabeled_loss(self, logits_strong: Tensor, pseudo: PseudoLabels, step: int) -> Tensor:
        return (cross_entropy_per_sample(logits_strong, pseudo.targets) * pseudo.mask).mean()

    def extra_loss(self, logits_strong: Tensor, pseudo: PseudoLabels) -> Tensor | None:
        """A further weighted term added to the loss (None: none); its statistics go to pseudo.stats."""
        return None

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s) = batch.labeled.views, batch.unlabeled.views
        logits_lb, logits_w, logits_s = forward_views(ctx.network, x_lb, x_w, x_s)
        loss_sup, labeled_stats = self.labeled_loss(logits_lb, batch.labeled.labels, ctx.step)
        pseudo = self.pseudo_label(logits_w.detach(), ctx.step, batch.unlabeled.indices)
        loss_unsup = self.unlabeled_loss(logits_s, pseudo, ctx.step)
        loss = loss_sup + self.lambda_u * loss_unsup
        extra = self.extra_loss(logits_s, pseudo)
        if extra is not None:
            loss = loss + extra
        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 **pseudo.stats, **labeled_stats}
        stats.update(selection_stats(pseudo.mask, pseudo.labels, batch.unlabeled.labels))
        return StepOutput(loss, stats)
