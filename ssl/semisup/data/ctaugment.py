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
Each reproduces PIL pixel for pixel (tests/test_ctaugment.py): rotate and shear in Pillow's 16.16
fixed point, rescale with Pillow's fixed-point filter weights. The geometric ops fill uncovered
pixels with black, as the reference's PIL calls (no fillcolor) do; this project's RandAugment
fills with gray 128 instead.

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
Rates are float64 on the training device; the batched update is the closed form of the
reference's loop (decay^k r + (1 - decay) sum_j decay^(k-j) p_j), equal up to rounding.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import augment as ops

__all__ = ["CTAugment", "CTAugmentSettings", "CTAPolicy", "OP_NAMES", "TRANSLATE_UNITS",
           "PROBE_NETWORKS"]

TRANSLATE_UNITS = ("pixels", "width")
PROBE_NETWORKS = ("ema", "raw")
CUTOUT_FILL = 127
GEOMETRIC_FILL = 0          # PIL's transform and rotate without a fillcolor
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
# The ops: (images (n, C, H, W) uint8, levels (n, 2) float64, centres (n, 2) float64) -> images


def _blended(op: Callable[[Tensor], Tensor]):
    """Image.blend(image, op(image), level)."""
    return lambda images, levels, centres: ops._blend(images, op(images), levels[:, 0])


def _enhanced(op: Callable[[Tensor, Tensor], Tensor]):
    """ImageEnhance: factor 0.1 + 1.9 level (computed in double, as Python does)."""
    return lambda images, levels, centres: op(images, 0.1 + 1.9 * levels[:, 0])


def _blur_filter(images: Tensor) -> Tensor:
    """PIL's ImageFilter.BLUR as float32 pixels: the 5x5 ring of ones / 16, rounded half up, the
    two-pixel border kept."""
    pixels = images.float()
    height, width = pixels.shape[-2:]
    if height < 5 or width < 5:
        return pixels
    row_sums = sum(pixels[..., :, k:width - 4 + k] for k in range(5))
    ring = (row_sums[..., 0:-4, :] + row_sums[..., 4:, :]
            + sum(pixels[..., k:height - 4 + k, 0:-4] + pixels[..., k:height - 4 + k, 4:]
                  for k in range(1, 4)))
    blurred = pixels.clone()
    blurred[..., 2:-2, 2:-2] = (ring / 16 + 0.5).floor()
    return blurred


def _invert(images: Tensor) -> Tensor:
    return 255 - images


def _cutout(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    n, channels, height, width = images.shape
    sizes = 1 + (levels[:, 0] * min(height, width) * 0.499).floor()
    halves = (sizes / 2).floor().view(n, 1, 1)
    rows = (centres[:, 0] * height).floor().view(n, 1, 1)
    columns = (centres[:, 1] * width).floor().view(n, 1, 1)
    row_index = torch.arange(height, device=images.device).view(1, height, 1)
    column_index = torch.arange(width, device=images.device).view(1, 1, width)
    inside = ((row_index >= rows - halves) & (row_index < rows + halves)
              & (column_index >= columns - halves) & (column_index < columns + halves))
    cut = inside.unsqueeze(1).to(torch.uint8)
    return images * (1 - cut) + CUTOUT_FILL * cut


def _posterize(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    return ops._posterize(images, 1 + (levels[:, 0] * 7.999).floor())


def _pil_affine(images: Tensor, coefficients: tuple) -> Tensor:
    """Image.transform(size, AFFINE, (a, b, c, d, e, f)) with b or d not 0, as Pillow computes it:
    in 16.16 fixed point (Geometry.c affine_fixed), which the float formula of
    semisup.data.augment._affine matches but for source points within 2^-16 of a pixel edge.
    Coefficients are numbers or per-sample float64 tensors (n,); fill GEOMETRIC_FILL."""
    n, _, height, width = images.shape
    a, b, c, d, e, f = (torch.as_tensor(k, dtype=torch.float64, device=images.device).view(-1, 1, 1)
                        for k in coefficients)
    fix = lambda value: (value * 65536.0 + 0.5).floor().long()
    y = torch.arange(height, device=images.device).view(1, -1, 1)
    x = torch.arange(width, device=images.device).view(1, 1, -1)
    source_columns = (fix(c + a * 0.5 + b * 0.5) + y * fix(b) + x * fix(a)) >> 16
    source_rows = (fix(f + d * 0.5 + e * 0.5) + y * fix(e) + x * fix(d)) >> 16
    inside = ((source_columns >= 0) & (source_columns < width)
              & (source_rows >= 0) & (source_rows < height))
    return ops._gather_pixels(images, source_rows.clamp(0, height - 1),
                              source_columns.clamp(0, width - 1), fill_where=~inside,
                              fill=GEOMETRIC_FILL)


@functools.lru_cache(maxsize=16)
def _rotation_coefficients(width: int, height: int, device: torch.device) -> Tensor:
    """Image.rotate's affine coefficients for every whole angle -45..45 (its Python arithmetic:
    the angle mod 360, sin and cos rounded to 15 digits, about the centre)."""
    rows = []
    for degrees in range(-45, 46):
        angle = -math.radians(degrees % 360.0)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
        centre_x, centre_y = width / 2, height / 2
        c = a * -centre_x + b * -centre_y + 0.0 + centre_x
        f = d * -centre_x + e * -centre_y + 0.0 + centre_y
        rows.append((a, b, c, d, e, f))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def _rotate(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    degrees = torch.round((2 * levels[:, 0] - 1) * 45).long()     # half to even, as np.round
    table = _rotation_coefficients(images.shape[3], images.shape[2], images.device)
    rotated = _pil_affine(images, tuple(table[degrees + 45].unbind(1)))
    unrotated = (degrees == 0).view(-1, 1, 1, 1).to(torch.uint8)   # Image.rotate(0) copies
    return rotated * (1 - unrotated) + images * unrotated


def _shear_x(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    return _pil_affine(images, (1, (2 * levels[:, 0] - 1) * 0.3, 0, 0, 1, 0))


def _shear_y(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    return _pil_affine(images, (1, 0, 0, (2 * levels[:, 0] - 1) * 0.3, 1, 0))


def _solarize(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    return ops._solarize(images, (levels[:, 0] * 255.999).floor())


def _translate(axis: str, unit: str):
    def translate(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
        shift = (2 * levels[:, 0] - 1) * 0.3
        if unit == "width":
            shift = shift * images.shape[3 if axis == "x" else 2]
        coefficients = (1, 0, shift, 0, 1, 0) if axis == "x" else (1, 0, 0, 0, 1, shift)
        return ops._affine(images, coefficients, GEOMETRIC_FILL)
    return translate


# ---- rescale: Image.crop, then Image.resize with one of six filters, as Pillow's Resample.c ----

PRECISION_BITS = 22      # Pillow's fixed-point coefficients for 8-bit images


def _sinc(x: float) -> float:
    return 1.0 if x == 0.0 else math.sin(x * math.pi) / (x * math.pi)


def _bicubic(x: float) -> float:
    a, x = -0.5, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


# (filter, support) in FixMatch-TF's order: ANTIALIAS (= LANCZOS), BICUBIC, BILINEAR, BOX,
# HAMMING; NEAREST (None) is an affine lookup in Pillow.
_RESIZE_FILTERS = (
    (lambda x: _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0, 3.0),
    (_bicubic, 2.0),
    (lambda x: 1.0 - abs(x) if abs(x) < 1.0 else 0.0, 1.0),
    (lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0, 0.5),
    (_hamming, 1.0),
    None,
)


def _resize_coefficients(size: int, start: int, stop: int, method: int) -> list[list[int]]:
    """Pillow's fixed-point weights of resizing the pixels start..stop of a line of `size` back to
    `size` pixels (out[x] = sum_k weights[x][k] in[k], then >> 22 after adding half)."""
    one = 1 << PRECISION_BITS
    weights = [[0] * size for _ in range(size)]
    if start == 0 and stop == size:                  # Pillow copies
        for x in range(size):
            weights[x][x] = one
        return weights
    scale = (stop - start) / size
    if _RESIZE_FILTERS[method] is None:              # ImagingScaleAffine: accumulated positions
        position = scale * 0.5
        for x in range(size):
            source = -1 if position < 0.0 else int(position)
            weights[x][start + source] = one
            position += scale
        return weights
    kernel, support = _RESIZE_FILTERS[method]        # precompute_coeffs (no upscaling here)
    for x in range(size):
        centre = (x + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), stop - start)
        taps = [kernel(k + first - centre + 0.5) for k in range(last - first)]
        total = sum(taps)
        for k, tap in enumerate(taps):
            tap = tap / total if total != 0.0 else tap
            weights[x][start + first + k] = int(-0.5 + tap * one) if tap < 0 else int(0.5 + tap * one)
    return weights


@functools.lru_cache(maxsize=8)
def _rescale_table(size: int, device: torch.device) -> Tensor:
    """Every line's resize weights (float64, exact integers) indexed by
    (start * 3 + stop - (size - start) + 1) * 6 + method: the crop's stop is within one pixel of
    size - start."""
    largest_start = round(0.25 * size) + 1
    table = torch.zeros(largest_start + 1, 3, 6, size, size, dtype=torch.float64)
    for start, offset, method in itertools.product(range(largest_start + 1), range(3), range(6)):
        stop = size - start + offset - 1
        if start < stop <= size:
            table[start, offset, method] = torch.tensor(
                _resize_coefficients(size, start, stop, method), dtype=torch.float64)
    return table.view(-1, size, size).to(device)


def _rescale(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
    n, _, height, width = images.shape
    scales = levels[:, 0] * 0.25
    methods = (levels[:, 1] * 5.99).floor().long()

    def line_weights(size: int) -> Tensor:
        start = torch.round(scales * size)                # Image.crop: round() of a float box
        stop = torch.round(size * (1 - scales))
        index = ((start * 3 + stop - (size - start) + 1).long() * 6 + methods)
        return _rescale_table(size, images.device)[index]   # (n, size out, size in)

    def resample(lines: Tensor, weights: Tensor) -> Tensor:
        # lines (n, C, L, size in) @ weights^T: exact integer sums in float64, then Pillow's clip8
        sums = lines.double() @ weights.transpose(1, 2).unsqueeze(1)
        return ((sums + (1 << PRECISION_BITS - 1)) / (1 << PRECISION_BITS)).floor().clamp(0, 255)

    horizontal = resample(images, line_weights(width))                       # Pillow: first
    vertical = resample(horizontal.transpose(2, 3), line_weights(height)).transpose(2, 3)
    return vertical.to(torch.uint8)


@dataclass(frozen=True)
class _CTAOp:
    name: str
    bins: tuple[int, ...]
    apply: Callable[[Tensor, Tensor, Tensor], Tensor] | None     # None: identity


def _make_ops(translate: str) -> tuple[_CTAOp, ...]:
    """FixMatch-TF's OPS in its order (the registration order of libml/ctaugment.py)."""
    return (
        _CTAOp("autocontrast", (17,), _blended(lambda x: ops._auto_contrast(x, None))),
        _CTAOp("blur", (17,), _blended(_blur_filter)),
        _CTAOp("brightness", (17,), _enhanced(ops._brightness)),
        _CTAOp("color", (17,), _enhanced(ops._color)),
        _CTAOp("contrast", (17,), _enhanced(ops._contrast)),
        _CTAOp("cutout", (17,), _cutout),
        _CTAOp("equalize", (17,), _blended(lambda x: ops._equalize(x, None))),
        _CTAOp("invert", (17,), _blended(_invert)),
        _CTAOp("identity", (), None),
        _CTAOp("posterize", (8,), _posterize),
        _CTAOp("rescale", (17, 6), _rescale),
        _CTAOp("rotate", (17,), _rotate),
        _CTAOp("sharpness", (17,), _enhanced(ops._sharpness)),
        _CTAOp("shear_x", (17,), _shear_x),
        _CTAOp("shear_y", (17,), _shear_y),
        _CTAOp("smooth", (17,), _blended(ops._smooth_filter)),
        _CTAOp("solarize", (17,), _solarize),
        _CTAOp("translate_x", (17,), _translate("x", translate)),
        _CTAOp("translate_y", (17,), _translate("y", translate)),
    )


OP_NAMES = tuple(op.name for op in _make_ops("pixels"))


# ---------------------------------------------------------------------------------------------
# The augmenter: bin rates (its state), policies, applying them, learning from probes


class CTAugment:
    """The bin rates of one run and what draws from and updates them. `state_dict` is what a
    checkpoint carries."""

    def __init__(self, settings: CTAugmentSettings, device: torch.device | str = "cpu"):
        self.settings = settings
        self.ops = _make_ops(settings.translate)
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
        device = generator.device
        op_indices = torch.randint(0, len(self.ops), shape, generator=generator, device=device)
        uniforms = torch.rand((*shape, MAX_ARGUMENTS), generator=generator, device=device,
                              dtype=torch.float64)
        centres = torch.rand((*shape, 2), generator=generator, device=device, dtype=torch.float64)
        counts = self.bin_counts[op_indices]                               # (n, depth, 2)
        if probe:
            levels = torch.rand((*shape, MAX_ARGUMENTS), generator=generator, device=device,
                                dtype=torch.float64)
            chosen = (levels * counts * 0.999).floor().long()
        else:
            weights = self.bin_weights()[op_indices]                       # (n, depth, 2, widest)
            cumulative = weights.cumsum(-1)
            targets = uniforms * cumulative[..., -1]
            chosen = (cumulative <= targets.unsqueeze(-1)).sum(-1).clamp(max=(counts - 1).clamp(min=0))
            levels = (chosen + torch.rand((*shape, MAX_ARGUMENTS), generator=generator,
                                          device=device, dtype=torch.float64)) / counts.clamp(min=1)
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
        return _cutout(images, torch.ones_like(centres), centres)

    def probe(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, CTAPolicy]:
        """A probe view (uniform ops and levels, no cutout) and its policy, for `update`."""
        policy = self.policy(len(images), generator, probe=True)
        return self.apply(images, policy), policy

    # ---- learning ---------------------------------------------------------------------------
    def update(self, policy: CTAPolicy, probabilities: Tensor, labels: Tensor) -> None:
        """rate <- decay rate + (1 - decay) proximity for every bin each probe used, in the
        reference's order (samples, then ops, then arguments), as one batched closed form."""
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
