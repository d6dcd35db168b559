"""Parts shared by the algorithms that compare embeddings (CoMatch, SimMatch), as semilearn
0.3.2 builds them: the projection head on the network's features and distribution alignment
over a queue of past batch means.

  projection_head   Linear(F, F), ReLU, Linear(F, d), each row scaled to unit L2 norm
                    (semilearn's CoMatch_Net / SimMatch_Net; the wrappers initialise nothing,
                    so the layers keep PyTorch's default initialisation)
  QueueAlignment    p <- p * p_target / mean(queue of batch means), renormalised, p_target
                    uniform (semilearn's DistAlignQueueHook with p_target_type 'uniform')

semilearn's queue of batch means starts as zeros and its mean is taken over every row, the empty
ones too, until it has wrapped (ALGORITHMS.md); `alignment_mean` names both forms:
  all_rows     the mean over all `length` rows, unfilled rows counting as zeros (semilearn)
  filled_rows  the mean over the batch means pushed so far (a moving average of the last
               `length` batches, as CoMatch's and SimMatch's papers describe it)
The two differ only through the 1e-6 guards of the alignment (a scale of p_model cancels in the
renormalisation) and only during the first `length` steps.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .components import FeatureQueue, Stateful
from .masking import distribution_alignment

ALIGNMENT_MEANS = ("all_rows", "filled_rows")


class L2Normalise(nn.Module):
    """Each row divided by its L2 norm (no epsilon, as semilearn's l2norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def projection_head(num_features: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU(),
                         nn.Linear(num_features, dim), L2Normalise())


class QueueAlignment(Stateful):
    """Distribution alignment to the uniform distribution, p_model the mean of the last `length`
    batch means (see the module docstring for `mean`)."""

    def __init__(self, num_classes: int, length: int, mean: str):
        if mean not in ALIGNMENT_MEANS:
            raise ValueError(f"alignment_mean {mean!r} is not one of {ALIGNMENT_MEANS}")
        self.num_classes, self.mean = num_classes, mean
        self.batch_means = FeatureQueue(length, num_classes)

    def p_model(self) -> Tensor:
        rows = self.batch_means.rows if self.mean == "all_rows" else self.batch_means.filled()
        return rows.mean(dim=0)

    def __call__(self, probs: Tensor) -> Tensor:
        """Push the batch's mean, then align the batch."""
        self.batch_means.push(probs.mean(dim=0, keepdim=True))
        p_model = self.p_model()
        return distribution_alignment(probs, p_model, torch.full_like(p_model, 1 / self.num_classes))


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot rows built on the labels' device (F.one_hot on CUDA reads the labels' range back
    to the host)."""
    classes = torch.arange(num_classes, device=labels.device)
    return (labels[:, None] == classes[None, :]).to(dtype)
