"""SimMatch (Zheng et al., 2022), as semilearn 0.3.2 runs it on CIFAR, SVHN and the small sets:
a memory bank of the labeled samples' 128-d projections links the unlabeled samples to the
labeled ones. The weak view's similarities to the bank, rescaled by its class probabilities, are
the target of the strong view's similarities (instance consistency), and the similarities summed
per class smooth the pseudo-labels; the masked soft cross-entropy trains the strong view.

  p        = DA(softmax(logits_w))                  (a queue of the last 32 batch means)
  q_ij     = softmax_j(z_w_i . b_j / T)             (b_j: bank row of labeled sample j, label y_j)
  teacher  = q_ij p_i[y_j], rows normalised;  aggregated_ic = sum_{j: y_j = c} q_ij
  targets  = alpha p + (1 - alpha) aggregated       (p alone before similarity_start_step)
  loss_u   = mean_i [max targets_i >= tau] H(targets_i, softmax(logits_s_i))
  loss_in  = mean_i H(teacher_i, softmax_j(z_s_i . b_j / T))   (weight 0 before the start step)
  loss     = CE(labeled) + lambda_u loss_u + lambda_in loss_in
  b_j     <- normalise(m b_j + (1 - m) z_lb_j) for the batch's labeled samples; their labels too

semilearn 0.3.2's own behaviour (ALGORITHMS.md), followed here:
- the "EMA teacher" is the online network on these datasets (its weak-view outputs, detached):
  no EMA network is needed. (semilearn's EMA-teacher mode, for ImageNet, is not offered.)
- the bank has one row per labeled sample: semilearn forces its `K` to the labeled-set size.
- the bank starts as random unit rows (drawn here from the step generator at the first step),
  its labels as class 0, until a sample's first update.
- instance consistency and the smoothed targets are off during its first 1024-step epoch:
  `similarity_start_step` (1024).
- bank_normalisation: across_batch (semilearn) normalises the updated rows along the batch
  dimension, each feature dimension to unit norm over the labeled batch (rows end with norm about
  sqrt(d / B), so the similarities run at another temperature); per_sample scales each row to
  unit norm, as the projections and the initial rows are (the intended form).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   forward_outputs, selection_stats, supervised_loss)
from .components import MemoryBank
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask
from .similarity import QueueAlignment, one_hot, projection_head

BANK_NORMALISATIONS = ("across_batch", "per_sample")


def bank_similarities(features: Tensor, bank: Tensor, T: float) -> Tensor:
    """softmax_j(z_i . b_j / T): each sample's distribution over the bank's rows."""
    return torch.softmax(features @ bank.T / T, dim=1)


def teacher_targets(similarity: Tensor, probs: Tensor, bank_labels: Tensor, num_classes: int
                    ) -> tuple[Tensor, Tensor]:
    """The instance target q_ij p_i[y_j] (rows normalised) and the class aggregate
    sum_{j: y_j = c} q_ij (a product with the bank's one-hot labels: deterministic on any device,
    unlike semilearn's scatter_add, and equal to it)."""
    scaled = similarity * probs.gather(1, bank_labels.expand(len(probs), -1))
    aggregated = similarity @ one_hot(bank_labels, num_classes, similarity.dtype)
    return scaled / scaled.sum(dim=1, keepdim=True), aggregated


def instance_consistency_loss(features_strong: Tensor, bank: Tensor, teacher: Tensor, T: float) -> Tensor:
    """mean_i H(teacher_i, softmax_j(z_s_i . b_j / T))."""
    return -(teacher * F.log_softmax(features_strong @ bank.T / T, dim=1)).sum(dim=1).mean()


def updated_bank_rows(old: Tensor, new: Tensor, momentum: float, normalisation: str) -> Tensor:
    """normalise(m old + (1 - m) new), rows being samples: across_batch scales each column (a
    feature dimension over the batch) to unit norm, as semilearn; per_sample each row."""
    mixed = momentum * old + (1 - momentum) * new
    return F.normalize(mixed, dim=0 if normalisation == "across_batch" else 1)


@register
class SimMatch(Algorithm):
    name = "simmatch"
    display_name = "SimMatch"
    reference = "semilearn 0.3.2"
    figures = ("selection",)
    hyperparameters = """
      tau: {description: Confidence threshold of the (smoothed) pseudo-labels., type: number,
            minimum: 0, maximum: 1}
      lambda_u: {description: Weight of the unsupervised cross-entropy., type: number, minimum: 0}
      lambda_in: {description: Weight of the instance consistency loss (semilearn's
                  in_loss_ratio)., type: number, minimum: 0}
      T: {description: Temperature of the similarities to the bank., type: number,
          exclusiveMinimum: 0}
      projection_dim: {description: Width of the l2-normalised projection (semilearn's
                       proj_size)., type: integer, minimum: 1}
      smoothing_alpha: {description: "targets = alpha p + (1 - alpha) (similarities summed per
                        class).", type: number, minimum: 0, maximum: 1}
      similarity_start_step:
        description: >-
          First step of the instance consistency loss and of the smoothed targets. semilearn
          0.3.2: 1024, the end of its first 1024-step epoch.
        type: integer
        minimum: 0
      bank_momentum: {description: "Bank rows <- normalise(m old + (1 - m) new) (semilearn: 0.7
                      on CIFAR, SVHN and the small sets).", type: number, minimum: 0, maximum: 1}
      bank_normalisation:
        description: >-
          across_batch: each feature dimension to unit norm over the labeled batch (semilearn
          0.3.2, F.normalize along the batch); per_sample: each bank row to unit norm (the
          intended form).
        enum: [across_batch, per_sample]
      alignment_batches: {description: Distribution alignment averages the last this many batch
                          means (semilearn's da_len)., type: integer, minimum: 1}
      alignment_mean:
        description: >-
          all_rows: the mean over the whole queue of batch means, unfilled rows counting as
          zeros (semilearn 0.3.2); filled_rows: over the batch means pushed so far.
        enum: [all_rows, filled_rows]
    """
    foreign_keys: ClassVar[dict[str, str]] = {"K": (
        "semilearn's SimMatch overwrites `K` with the labeled-set size: the bank has one row per "
        "labeled sample, as here, whatever K says. Remove algorithms.simmatch.K")}
    views = Views(labeled=("weak",), unlabeled=("weak", "strong"))
    state_names = ("bank_drawn",)

    def __init__(self, *, tau: float, lambda_u: float, lambda_in: float, T: float,
                 projection_dim: int, smoothing_alpha: float, similarity_start_step: int,
                 bank_momentum: float, bank_normalisation: str, alignment_batches: int,
                 alignment_mean: str, **base):
        super().__init__(**base)
        if bank_normalisation not in BANK_NORMALISATIONS:
            raise ValueError(f"simmatch: bank_normalisation {bank_normalisation!r} is not one of "
                             f"{BANK_NORMALISATIONS}")
        self.tau, self.lambda_u, self.lambda_in, self.T = tau, lambda_u, lambda_in, T
        self.projection_dim, self.smoothing_alpha = projection_dim, smoothing_alpha
        self.similarity_start_step = similarity_start_step
        self.bank_momentum, self.bank_normalisation = bank_momentum, bank_normalisation
        self.alignment = QueueAlignment(self.num_classes, alignment_batches, alignment_mean)
        self.bank = MemoryBank(self.num_labeled, projection_dim)
        self.bank_labels = MemoryBank(self.num_labeled, dtype=torch.long)
        self.bank_drawn = False   # the bank's random initial rows are drawn at the first step

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {"proj": projection_head(num_features, self.projection_dim)}

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s) = batch.labeled.views, batch.unlabeled.views
        out_lb, out_w, out_s = forward_outputs(ctx.network, x_lb, x_w, x_s, want=("proj",))
        labels = batch.labeled.labels
        loss_sup = supervised_loss(out_lb.logits, labels)
        self.draw_bank(ctx.generator)
        # copies: the update below writes into the bank, which the backward pass still needs
        bank, bank_labels = self.bank.rows.clone(), self.bank_labels.rows.clone()
        similarity_on = ctx.step >= self.similarity_start_step

        with torch.no_grad():
            probs = self.alignment(torch.softmax(out_w.logits.detach().float(), dim=-1))
            similarity = bank_similarities(out_w.heads["proj"].detach(), bank, self.T)
            teacher, aggregated = teacher_targets(similarity, probs, bank_labels, self.num_classes)
            targets = probs
            if similarity_on:
                targets = self.smoothing_alpha * probs + (1 - self.smoothing_alpha) * aggregated
            confidence, pseudo_labels = confidence_and_pseudo_labels(targets)
            mask = fixed_threshold_mask(confidence, self.tau)

        loss_unsup = (cross_entropy_per_sample(out_s.logits, targets) * mask).mean()
        loss_instance = instance_consistency_loss(out_s.heads["proj"], bank, teacher, self.T)
        weight_instance = self.lambda_in if similarity_on else 0.0   # semilearn: loss * 0.0
        loss = loss_sup + self.lambda_u * loss_unsup + weight_instance * loss_instance
        self.update_bank(batch.labeled.indices, out_lb.heads["proj"].detach(), labels)
        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_instance": loss_instance.detach()}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss, stats)

    def draw_bank(self, generator: torch.Generator) -> None:
        """semilearn's initial bank: Gaussian rows scaled to unit norm."""
        if not self.bank_drawn:
            rows = torch.randn(self.bank.rows.shape, generator=generator, device=generator.device)
            self.bank.rows = F.normalize(rows, dim=1).to(self.bank.rows.device)
            self.bank_drawn = True

    def update_bank(self, indices: Tensor, features: Tensor, labels: Tensor) -> None:
        rows = updated_bank_rows(self.bank[indices], features.float(), self.bank_momentum,
                                 self.bank_normalisation)
        self.bank.update(indices, rows)
        self.bank_labels.update(indices, labels)
