"""CoMatch (Li et al., 2021), as semilearn 0.3.2 runs it: class probabilities and l2-normalised
64-d projections regularise each other. The weak view's probabilities, aligned to the uniform
distribution, are smoothed with the memory of past samples once past the first epoch; their
masked soft cross-entropy trains the first strong view, and their graph (p p^T) is the target of
a contrastive loss between the projections of the two strong views.

  p       = DA(softmax(logits_w))                   (a queue of the last 32 batch means)
  p      <- alpha p + (1 - alpha) softmax(z_w . Z^T / T) P    from step smoothing_start_step
  loss_u  = mean_i [max p_i >= tau] H(p_i, softmax(logits_s0_i))   (soft targets, unsharpened)
  Q       = p p^T, diagonal 1, entries < contrast_threshold zeroed, rows normalised
  loss_c  = -mean_i sum_j Q_ij log(softmax_j(z_s0_i . z_s1_j / T) + 1e-7)
  loss    = CE(labeled) + lambda_u loss_u + lambda_contrast loss_c
  (Z, P) <- push ([z_w; z_lb], [p before smoothing; one-hot(y_lb)])   (queue_batches steps)

Where semilearn departs from the paper (ALGORITHMS.md), its behaviour is the default:
  smoothing_start_step  semilearn smooths once `epoch > 0 and it > queue_batch`: from step 1024
                        with its 1024-step epochs (the paper's "after the first epoch"); here
                        from this step, and never before the memory is full (step > queue_batches).
  alignment_mean        all_rows: semilearn's queue of batch means starts as zeros and its mean
                        counts the empty rows; filled_rows: the batches seen (similarity.py).
semilearn's `hard_label` is never read (targets are soft); `T` is the temperature of both
similarities, not a sharpening temperature.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from . import register
from .base import (Algorithm, StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample,
                   forward_outputs, selection_stats, supervised_loss)
from .components import FeatureQueue
from .masking import confidence_and_pseudo_labels, fixed_threshold_mask
from .similarity import QueueAlignment, one_hot, projection_head


def memory_smoothed(probs: Tensor, features: Tensor, queue_features: Tensor, queue_probs: Tensor,
                    alpha: float, T: float) -> Tensor:
    """p <- alpha p + (1 - alpha) softmax(z . Z^T / T) P: each sample's probabilities mixed with
    those of the remembered samples it resembles."""
    affinity = torch.softmax(features @ queue_features.T / T, dim=1)
    return alpha * probs + (1 - alpha) * affinity @ queue_probs


def pseudo_label_graph(probs: Tensor, threshold: float) -> Tensor:
    """Q = p p^T with self-loops (diagonal 1), entries below `threshold` cut, rows normalised."""
    graph = probs @ probs.T
    graph.fill_diagonal_(1)
    graph = graph * (graph >= threshold).to(graph.dtype)
    return graph / graph.sum(dim=1, keepdim=True)


def graph_contrastive_loss(features_0: Tensor, features_1: Tensor, graph: Tensor, T: float) -> Tensor:
    """-mean_i sum_j Q_ij log(softmax_j(z0_i . z1_j / T) + 1e-7) (the 1e-7 is semilearn's)."""
    similarity = torch.softmax(features_0 @ features_1.T / T, dim=1)
    return -(graph * torch.log(similarity + 1e-7)).sum(dim=1).mean()


@register
class CoMatch(Algorithm):
    name = "comatch"
    display_name = "CoMatch"
    reference = "semilearn 0.3.2"
    figures = ("selection",)
    hyperparameters = """
      tau: {description: Confidence threshold of the (smoothed) pseudo-labels., type: number,
            minimum: 0, maximum: 1}
      lambda_u: {description: Weight of the unsupervised cross-entropy., type: number, minimum: 0}
      lambda_contrast: {description: Weight of the graph contrastive loss (semilearn's
                        contrast_loss_ratio)., type: number, minimum: 0}
      contrast_threshold: {description: Pseudo-label graph entries below it are cut (semilearn's
                           contrast_p_cutoff)., type: number, minimum: 0, maximum: 1}
      T: {description: Temperature of the contrastive and the memory similarities (not a
          sharpening temperature)., type: number, exclusiveMinimum: 0}
      projection_dim: {description: Width of the l2-normalised projection (semilearn's
                       proj_size)., type: integer, minimum: 1}
      queue_batches: {description: "The memory holds the last queue_batches steps' samples,
                      weak unlabeled and labeled (semilearn's queue_batch).", type: integer,
                      minimum: 1}
      smoothing_alpha: {description: "Memory smoothing: p <- alpha p + (1 - alpha) (smoothed).",
                        type: number, minimum: 0, maximum: 1}
      smoothing_start_step:
        description: >-
          First step of memory smoothing (never before the memory is full, step >
          queue_batches). semilearn 0.3.2: 1024, the end of its first 1024-step epoch.
        type: integer
        minimum: 0
      alignment_batches: {description: Distribution alignment averages the last this many batch
                          means (semilearn's da_len)., type: integer, minimum: 1}
      alignment_mean:
        description: >-
          all_rows: the mean over the whole queue of batch means, unfilled rows counting as
          zeros (semilearn 0.3.2); filled_rows: over the batch means pushed so far (the paper's
          moving average).
        enum: [all_rows, filled_rows]
    """
    foreign_keys: ClassVar[dict[str, str]] = {"hard_label": (
        "semilearn's CoMatch `hard_label` is never read: its targets are soft probabilities, as "
        "here. Remove algorithms.comatch.hard_label")}
    views = Views(labeled=("weak",), unlabeled=("weak", "strong", "strong"))

    def __init__(self, *, tau: float, lambda_u: float, lambda_contrast: float,
                 contrast_threshold: float, T: float, projection_dim: int, queue_batches: int,
                 smoothing_alpha: float, smoothing_start_step: int, alignment_batches: int,
                 alignment_mean: str, **base):
        super().__init__(**base)
        self.tau, self.lambda_u, self.lambda_contrast = tau, lambda_u, lambda_contrast
        self.contrast_threshold, self.T, self.projection_dim = contrast_threshold, T, projection_dim
        self.queue_batches, self.smoothing_alpha = queue_batches, smoothing_alpha
        self.smoothing_start_step = smoothing_start_step
        self.alignment = QueueAlignment(self.num_classes, alignment_batches, alignment_mean)
        # The memory's rows: queue_batches steps of labeled + unlabeled samples. The batch size is
        # known at the first step (or from a checkpoint): until then the queues are placeholders.
        self.memory_features = FeatureQueue(1, projection_dim)
        self.memory_probs = FeatureQueue(1, self.num_classes)

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {"proj": projection_head(num_features, self.projection_dim)}

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        (x_lb,), (x_w, x_s0, x_s1) = batch.labeled.views, batch.unlabeled.views
        out_lb, out_w, out_s0, out_s1 = forward_outputs(ctx.network, x_lb, x_w, x_s0, x_s1,
                                                        want=("proj",))
        labels = batch.labeled.labels
        loss_sup = supervised_loss(out_lb.logits, labels)

        with torch.no_grad():
            features_w, features_lb = out_w.heads["proj"].detach(), out_lb.heads["proj"].detach()
            probs = self.alignment(torch.softmax(out_w.logits.detach().float(), dim=-1))
            targets = probs
            if ctx.step >= self.smoothing_start_step and ctx.step > self.queue_batches:
                targets = memory_smoothed(probs, features_w, self.memory_features.rows,
                                          self.memory_probs.rows, self.smoothing_alpha, self.T)
            confidence, pseudo_labels = confidence_and_pseudo_labels(targets)
            mask = fixed_threshold_mask(confidence, self.tau)
            self.remember(torch.cat([features_w, features_lb]),
                          torch.cat([probs, one_hot(labels, self.num_classes, probs.dtype)]))
            graph = pseudo_label_graph(targets, self.contrast_threshold)

        loss_unsup = (cross_entropy_per_sample(out_s0.logits, targets) * mask).mean()
        loss_contrast = graph_contrastive_loss(out_s0.heads["proj"], out_s1.heads["proj"], graph,
                                               self.T)
        loss = loss_sup + self.lambda_u * loss_unsup + self.lambda_contrast * loss_contrast
        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "loss_contrast": loss_contrast.detach()}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled.labels))
        return StepOutput(loss, stats)

    def remember(self, features: Tensor, probs: Tensor) -> None:
        """Push a step's samples into the memory, sized at the first push to queue_batches
        steps of them."""
        size = self.queue_batches * len(features)
        if self.memory_features.size != size:
            if self.memory_features.count:
                raise ValueError(f"comatch: a step brought {len(features)} samples to a memory "
                                 f"sized for {self.memory_features.size // self.queue_batches}; "
                                 f"the batch size must not change within a run")
            self.memory_features = FeatureQueue(size, self.projection_dim).to(self.device)
            self.memory_probs = FeatureQueue(size, self.num_classes).to(self.device)
        self.memory_features.push(features)
        self.memory_probs.push(probs)
