"""MixUp as MixMatch and ReMixMatch use it, and the pieces the two share.

  lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha)   (one per step, on the host)
  x~ = lambda' x + (1 - lambda') x[pi],  y~ = lambda' y + (1 - lambda') y[pi]   (one permutation pi)

semilearn 0.3.2 (`mixup_one_target` with is_bias) draws lambda from numpy's global generator and pi
from torch's; here lambda comes from a numpy generator seeded by ctx.host_generator and pi from
ctx.generator on the training device, so a resumed run draws the same numbers and nothing reads
the device back to the host.

What is mixed, `mixup_space` (semilearn's `mixup_manifold`, "manifold mixup" in its help):
  inputs       the images themselves (semilearn's CV configs: mixup_manifold False)
  features     the network's pooled features; the classifier alone then runs on the mixed rows
               (semilearn's `only_feat` then `only_fc`); needed where inputs cannot be mixed
  by_modality  semilearn's setting per modality: inputs for images, features for text (token
               ids) and audio (semilearn's usb_nlp and usb_audio configs set mixup_manifold True
               for both algorithms, so it mixes HuBERT's and wav2vec2's pooled features, not
               waveforms)
With features, semilearn takes the unlabeled weak views' features from the guessing passes,
under no_grad, and its `mixup_one_target` is itself decorated with @torch.no_grad(): the mixed
features carry no gradient at all, so the losses on the mixed rows train the classifier alone
(semilearn's MixMatch on text and audio never trains the backbone; its ReMixMatch trains it
through the pre-mixup term only). `mixed_features_gradient` names it:
  none       semilearn 0.3.2 (mixup_one_target under no_grad)
  backbone   manifold MixUp as its paper means it: the gradient of the mixed rows reaches the
             backbone through the features that had one (the labeled ones, and in ReMixMatch the
             strong views'; the weak ones stay the no-grad guessing passes', as semilearn's)
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


MIXUP_SPACES = ("by_modality", "inputs", "features")
FEATURE_GRADIENTS = ("none", "backbone")


def check_mixup_space(algorithm: str, mixup_space: str, mixed_features_gradient: str) -> str:
    if mixup_space not in MIXUP_SPACES:
        raise ValueError(f"{algorithm}: mixup_space {mixup_space!r} is not one of "
                         f"{', '.join(MIXUP_SPACES)}")
    if mixed_features_gradient not in FEATURE_GRADIENTS:
        raise ValueError(f"{algorithm}: mixed_features_gradient {mixed_features_gradient!r} is "
                         f"not one of {', '.join(FEATURE_GRADIENTS)}")
    return mixup_space


def mixes_features(algorithm: str, mixup_space: str, inputs) -> bool:
    """Whether this step mixes pooled features (True) or the inputs themselves (False)."""
    if mixup_space == "features":
        return True
    if mixup_space == "by_modality":
        return not isinstance(inputs, Tensor)
    require_image_tensors(algorithm, inputs)
    return False


def require_image_tensors(algorithm: str, inputs) -> None:
    """MixUp of inputs needs tensors: token ids cannot be mixed, and semilearn mixes the features
    of text and audio."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{algorithm} mixes image tensors, not {type(inputs).__name__}: set "
                        f"algorithms.{algorithm}.mixup_space to features or by_modality "
                        f"(semilearn's mixup_manifold on text and audio)")


@torch.no_grad()
def mix(lam: float, permutation: Tensor, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each row mixed with row permutation[i]: inputs and targets alike (no gradient)."""
    permutation = permutation.to(inputs.device)
    return (lam * inputs + (1 - lam) * inputs[permutation],
            lam * targets + (1 - lam) * targets[permutation])


def mix_features(lam: float, permutation: Tensor, features: Tensor, targets: Tensor,
                 gradient: str) -> tuple[Tensor, Tensor]:
    """As `mix`; with gradient "backbone" the mixed features keep the gradient of the features
    (none: semilearn's no-grad mix, see the module docstring)."""
    if gradient == "none":
        return mix(lam, permutation, features, targets)
    permutation = permutation.to(features.device)
    with torch.no_grad():
        mixed_targets = lam * targets + (1 - lam) * targets[permutation]
    return lam * features + (1 - lam) * features[permutation], mixed_targets


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows (a scatter: F.one_hot would check the labels' range on the host elsewhere)."""
    rows = torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device)
    return rows.scatter_(1, labels[:, None], 1.0)


def sharpen_probabilities(probs: Tensor, T: float) -> Tensor:
    """p^(1/T) / sum_c p_c^(1/T), on probabilities (MixMatch sharpens an average of two)."""
    powered = probs ** (1 / T)
    return powered / powered.sum(dim=-1, keepdim=True)


def chunked_logits(network: nn.Module, inputs: Tensor, chunk_size: int,
                   from_features: bool = False) -> list[Tensor]:
    """The logits of `inputs` (images, or features with from_features) in chunks of `chunk_size`
    rows (the labeled batch size), each chunk its own BatchNorm batch, only the first updating
    the running statistics: semilearn 0.3.2's MixMatch and ReMixMatch (no interleaving)."""
    forward = (lambda chunk: network(chunk, from_features=True)) if from_features else network
    chunks = inputs.split(chunk_size)
    logits = [forward(chunks[0]).logits]
    with frozen_batchnorm_statistics(network):
        logits += [forward(chunk).logits for chunk in chunks[1:]]
    return logits
