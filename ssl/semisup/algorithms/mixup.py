"""MixUp as MixMatch and ReMixMatch use it, and the pieces the two share.

  lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha)   (one per step, on the host)
  x~ = lambda' x + (1 - lambda') x[pi],  y~ = lambda' y + (1 - lambda') y[pi]   (one permutation pi)

semilearn 0.3.2 (`mixup_one_target` with is_bias) draws lambda from numpy's global generator and pi
from torch's; here lambda comes from a numpy generator seeded by ctx.host_generator and pi from
ctx.generator on the training device, so a resumed run draws the same numbers and nothing reads
the device back to the host.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .base import StepContext, frozen_batchnorm_statistics


def mixup_draw(ctx: StepContext, num_rows: int, alpha: float) -> tuple[float, Tensor]:
    """lambda' (a Python float; 1 when alpha <= 0) and a permutation of `num_rows` rows."""
    if ctx.host_generator is None:
        raise ValueError("MixUp draws its lambda on the host: the step needs ctx.host_generator")
    seed = int(torch.randint(2 ** 63 - 1, (), generator=ctx.host_generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha)) if alpha > 0 else 1.0
    permutation = torch.randperm(num_rows, generator=ctx.generator, device=ctx.generator.device)
    return max(lam, 1.0 - lam), permutation


def require_image_tensors(algorithm: str, inputs) -> None:
    """MixUp of inputs needs tensors: token ids cannot be mixed (semilearn mixes text in feature
    space, mixup_manifold, which is not implemented here)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{algorithm} mixes image tensors, not {type(inputs).__name__} "
                        f"(semilearn's MixUp of text features, mixup_manifold, is not implemented)")


@torch.no_grad()
def mix(lam: float, permutation: Tensor, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each row mixed with row permutation[i]: inputs and targets alike (no gradient)."""
    permutation = permutation.to(inputs.device)
    return (lam * inputs + (1 - lam) * inputs[permutation],
            lam * targets + (1 - lam) * targets[permutation])


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows (a scatter: F.one_hot would check the labels' range on the host elsewhere)."""
    rows = torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device)
    return rows.scatter_(1, labels[:, None], 1.0)


def sharpen_probabilities(probs: Tensor, T: float) -> Tensor:
    """p^(1/T) / sum_c p_c^(1/T), on probabilities (MixMatch sharpens an average of two)."""
    powered = probs ** (1 / T)
    return powered / powered.sum(dim=-1, keepdim=True)


def chunked_logits(network: nn.Module, inputs: Tensor, chunk_size: int) -> list[Tensor]:
    """The logits of `inputs` in chunks of `chunk_size` rows (the labeled batch size), each chunk
    its own BatchNorm batch, only the first updating the running statistics: semilearn 0.3.2's
    MixMatch and ReMixMatch (no interleaving)."""
    chunks = inputs.split(chunk_size)
    logits = [network(chunks[0]).logits]
    with frozen_batchnorm_statistics(network):
        logits += [network(chunk).logits for chunk in chunks[1:]]
    return logits
