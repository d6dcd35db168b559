"""CTAugment: control-theory augmentation (ReMixMatch; FixMatch's CTA rows), batched on the
training device, after FixMatch-TF's libml/ctaugment.py and the way its fixmatch.py and
cta/lib/train.py use it.

19 ops, each with zero, one or two arguments; every argument has bins (17, or posterize's 8 and
rescale's 6 methods) with a rate that starts at 1. A training image gets `depth` ops, each drawn
uniformly, and for each argument a bin drawn with probability proportional to
    w = (rate + 1 - decay) / max(rate + 1 - decay),  w set to 0 where w < threshold,
and a level uniform inside that bin: level = (bin + u) / bins, in [0, 1). Then a cutout of level 1
always comes last (16 px at 32 px). A probe image gets `depth` uniform ops at uniform levels; the
network's prediction p on it scores the policy, proximity = 1 - |p - onehot(label)|_1 / 2, and
each bin the probe used (bin = int(level * bins * 0.999)) moves towards it:
rate <- decay * rate + (1 - decay) * proximity, in the order of the samples, then their ops (the
reference's loop; the same bin updated k times in one batch gets the k updates in that order).

How each level becomes an op's argument (FixMatch-TF), the ops as PIL runs them:
  autocontrast, equalize, invert, blur (ImageFilter.BLUR), smooth (ImageFilter.SMOOTH):
            Image.blend(image, op(image), level)
  brightness, color, contrast, sharpness:  ImageEnhance.*.enhance(0.1 + 1.9 level)
  cutout    a square of side 2 * (s // 2), s = 1 + int(level * min(W, H) * 0.499), about a
            uniform pixel, clipped to the image, filled with gray 127
  identity  no argument
  posterize ImageOps.posterize(image, 1 + int(level * 7.999))          (8 bins)
  rescale   crop 0.25 level of the size from each side (Image.crop rounds the box), resize back
            with one of 6 filters (LANCZOS, BICUBIC, BILINEAR, BOX, HAMMING, NEAREST; 6 bins)
  rotate    Image.rotate(round((2 level - 1) * 45)) degrees
  shear_x/y Image.transform AFFINE with shear (2 level - 1) * 0.3
  solarize  ImageOps.solarize(image, int(level * 255.999))
  translate_x/y  Image.transform AFFINE moving by (2 level - 1) * 0.3 (see `translate`)
Each reproduces PIL pixel for pixel (semisup.data.ctaugment_ops; tests/test_ctaugment.py):
rotate and shear in Pillow's 16.16 fixed point, rescale with Pillow's fixed-point filter weights.
The geometric ops fill uncovered pixels with black, as the reference's PIL calls (no fillcolor)
do; this project's RandAugment fills with gray 128 instead.

Decisions where the reference leaves a choice (CTAugmentSettings; params.yaml train.ctaugment):
  * translate: `pixels` (the reference's code: the constant of PIL's affine is in pixels, so the
    image moves by at most 0.3 px, which nearest resampling rounds to no move at all: translate
    is the identity, and its bins learn what identity's would) or `width` (the paper's table:
    (2 level - 1) * 0.3 of the width).
  * probe_network: the network whose prediction scores a probe, in eval mode: `ema` (the
    reference's classify_op: the EMA weights, BatchNorm running statistics) or `raw` (the student).
  * which images are probed: the labeled batch's samples, one probe each (the reference). The
    reference applies the probe policy to the very weak view that trains; here the probe is a
    fresh weak view of the same samples (same distribution, an independent crop and flip).
  * when: the reference probes in the same session run as the training step (the EMA before the
    step's update) and updates the rates after it; the next batches' policies come from the new
    rates (the reference draws them in a background pool, a few steps stale). Here: the step's
    views are drawn, the probe is scored by the network as it is before the step's update and the
    rates are updated; the next step draws from them. Deterministic, so that resume is exact.
  * Image.ANTIALIAS, gone in Pillow 10, was an alias of LANCZOS: rescale's first filter.
  * threshold: FixMatch-TF's CTAugment class defaults to 0.85, but its runs pass the flag ath,
    0.80 (cta/lib/train.py); params.yaml has 0.8.
Rates are float64 on the training device; the batched update is the closed form of the
reference's loop (decay^k r + (1 - decay) sum_j decay^(k-j) p_j), equal up to rounding.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .ctaugment_ops import OP_NAMES, cutout, make_ops

__all__ = ["CTAugment", "CTAugmentSettings", "CTAPolicy", "OP_NAMES", "TRANSLATE_UNITS",
           "PROBE_NETWORKS"]

TRANSLATE_UNITS = ("pixels", "width")
PROBE_NETWORKS = ("ema", "raw")
MAX_ARGUMENTS = 2


@dataclass(frozen=True)
class CTAugmentSettings:
    """params.yaml train.ctaugment (FixMatch-TF's flags adepth, ath, adecay and the choices
    above)."""

    depth: int                 # ops per image (2)
    threshold: float           # bins whose normalised weight is below it are never drawn (0.8)
    decay: float               # of the bin rates (0.99)
    probe_network: str         # ema | raw
    translate: str             # pixels | width

    def __post_init__(self):
        if self.probe_network not in PROBE_NETWORKS:
            raise ValueError(f"ctaugment probe_network must be one of {PROBE_NETWORKS}, "
                             f"not {self.probe_network!r}")
        if self.translate not in TRANSLATE_UNITS:
            raise ValueError(f"ctaugment translate must be one of {TRANSLATE_UNITS}, "
                             f"not {self.translate!r}")


@dataclass
class CTAPolicy:
    """Each sample's ops, per turn: op index (n, depth), levels (n, depth, 2) in [0, 1), the
    rate index of each argument's bin (n, depth, 2; -1: no such argument) and the cutout centre
    as uniform fractions of the height and width (n, depth, 2)."""

    ops: Tensor
    levels: Tensor
    bins: Tensor
    centres: Tensor


# ---------------------------------------------------------------------------------------------
# The augmenter: bin rates (its state), policies, applying them, learning from probes


class CTAugment:
    """The bin rates of one run and what draws from and updates them. `state_dict` is what a
    checkpoint carries."""

    def __init__(self, settings: CTAugmentSettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.ops = make_ops(settings.translate)
        self.device = torch.device(device)
        counts = [[op.bins[k] if k < len(op.bins) else 0 for k in range(MAX_ARGUMENTS)]
                  for op in self.ops]
        offsets = [0, *itertools.accumulate(itertools.chain.from_iterable(counts))][:-1]
        self.bin_counts = torch.tensor(counts, device=self.device)                  # (ops, 2)
        self.bin_offsets = torch.tensor(offsets, device=self.device).view(-1, MAX_ARGUMENTS)
        self.num_bins = int(self.bin_counts.sum())
        self.widest = int(self.bin_counts.max())
        self.reset()

    def reset(self) -> None:
        self.rates = torch.ones(self.num_bins, dtype=torch.float64, device=self.device)

    def state_dict(self) -> dict:
        return {"rates": self.rates.clone()}

    def load_state_dict(self, state: dict) -> None:
        rates = state["rates"]
        if rates.shape != self.rates.shape:
            raise ValueError(f"CTAugment state has {rates.shape[0]} bin rates, not {self.num_bins}")
        self.rates = rates.to(device=self.device, dtype=torch.float64).clone()

    # ---- policies ---------------------------------------------------------------------------
    def bin_weights(self) -> Tensor:
        """(ops, 2, widest) drawing weights: the reference's rate_to_p, 0 beyond an argument's
        bins."""
        positions = torch.arange(self.widest, device=self.device)
        valid = positions < self.bin_counts.unsqueeze(-1)
        index = (self.bin_offsets.unsqueeze(-1) + positions).clamp(max=self.num_bins - 1)
        weights = torch.where(valid, self.rates[index] + (1 - self.settings.decay), 0.0)
        weights = weights / weights.amax(-1, keepdim=True).clamp(min=1e-300)
        return torch.where(weights < self.settings.threshold, 0.0, weights)

    def policy(self, n: int, generator: torch.Generator, probe: bool) -> CTAPolicy:
        """Per sample, `depth` ops drawn uniformly; training: bins drawn by weight and a uniform
        level inside; probe: uniform levels (no weights)."""
        shape = (n, self.settings.depth)
        uniform = lambda *size: torch.rand(size, generator=generator, device=generator.device,
                                           dtype=torch.float64)
        op_indices = torch.randint(0, len(self.ops), shape, generator=generator,
                                   device=generator.device)
        centres = uniform(*shape, 2)
        counts = self.bin_counts[op_indices]                               # (n, depth, 2)
        if probe:
            levels = uniform(*shape, MAX_ARGUMENTS)
            chosen = (levels * counts * 0.999).floor().long()
        else:   # inverse CDF: the first bin whose cumulative weight exceeds u * total
            cumulative = self.bin_weights()[op_indices].cumsum(-1)        # (n, depth, 2, widest)
            targets = uniform(*shape, MAX_ARGUMENTS) * cumulative[..., -1]
            chosen = (cumulative <= targets.unsqueeze(-1)).sum(-1)
            chosen = chosen.clamp(max=(counts - 1).clamp(min=0))
            levels = (chosen + uniform(*shape, MAX_ARGUMENTS)) / counts.clamp(min=1)
        bins = torch.where(counts > 0, self.bin_offsets[op_indices] + chosen, -1)
        return CTAPolicy(op_indices, levels, bins, centres)

    def apply(self, images: Tensor, policy: CTAPolicy, grouped: bool | None = None) -> Tensor:
        for turn in range(policy.ops.shape[1]):
            images = self.apply_ops(images, policy.ops[:, turn], policy.levels[:, turn],
                                    policy.centres[:, turn], grouped)
        return images

    def apply_ops(self, images: Tensor, op_indices: Tensor, levels: Tensor, centres: Tensor,
                  grouped: bool | None = None) -> Tensor:
        """Sample k becomes self.ops[op_indices[k]] applied to it: grouped by op on the CPU (a
        host read of the group sizes, free there), every op on the whole batch and a selection
        on CUDA (no host synchronisation), as semisup.data.augment does."""
        if grouped is None:
            grouped = images.device.type == "cpu"
        if not grouped:
            result = images
            for index, op in enumerate(self.ops):
                if op.apply is not None:
                    chosen = (op_indices == index).view(-1, 1, 1, 1)
                    result = torch.where(chosen, op.apply(images, levels, centres), result)
            return result
        order = torch.argsort(op_indices, stable=True)
        block_sizes = torch.bincount(op_indices, minlength=len(self.ops)).tolist()
        images, levels, centres = images.index_select(0, order), levels[order], centres[order]
        block_starts = [0, *itertools.accumulate(block_sizes)]
        for op, start, end in zip(self.ops, block_starts, block_starts[1:]):
            if end > start and op.apply is not None:
                images[start:end] = op.apply(images[start:end], levels[start:end],
                                             centres[start:end])
        return images.index_select(0, torch.argsort(order))

    def augment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The strong view's CTAugment part: `depth` weighted ops, then cutout at level 1."""
        images = self.apply(images, self.policy(len(images), generator, probe=False))
        centres = torch.rand((len(images), 2), generator=generator, device=images.device,
                             dtype=torch.float64)
        return cutout(images, torch.ones_like(centres), centres)

    def probe(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, CTAPolicy]:
        """A probe view (uniform ops and levels, no cutout) and its policy, for `update`."""
        policy = self.policy(len(images), generator, probe=True)
        return self.apply(images, policy), policy

    # ---- learning ---------------------------------------------------------------------------
    def update(self, policy: CTAPolicy, probabilities: Tensor, labels: Tensor) -> Tensor:
        """rate <- decay rate + (1 - decay) proximity for every bin each probe used, in the
        reference's order (samples, then ops, then arguments), as one batched closed form.
        Returns each probe's proximity."""
        decay = self.settings.decay
        onehot = F.one_hot(labels, probabilities.shape[1]).double()
        proximity = 1 - 0.5 * (probabilities.double() - onehot).abs().sum(1)
        bins = policy.bins.reshape(len(labels), -1)
        used = (bins >= 0).reshape(-1, 1).double()
        hits = F.one_hot(bins.clamp(min=0).reshape(-1), self.num_bins).double() * used
        later = hits.flip(0).cumsum(0).flip(0) - hits          # later updates of the same bin
        later_updates = (later * hits).sum(1)
        values = proximity.unsqueeze(1).expand_as(bins).reshape(-1)
        added = (hits * ((1 - decay) * decay ** later_updates * values).unsqueeze(1)).sum(0)
        self.rates = self.rates * decay ** hits.sum(0) + added
        return proximity
