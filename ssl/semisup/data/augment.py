"""Weak and strong augmentation of whole uint8 batches (N, C, H, W), C = 1 or 3, on the training
device. Every random choice is made per sample and drawn from the caller's seeded torch.Generator
(on the images' device), so a run is reproducible and resumes exactly from the generator's state.

weak   = random crop after reflect padding of round(pad_fraction * width) pixels per side, then a
         horizontal flip with probability 0.5 (torchvision's RandomCrop(padding_mode='reflect')
         and RandomHorizontalFlip; FixMatch does not flip SVHN: flip=False), then, where asked,
         a vertical flip likewise (semilearn's EuroSAT and TissueMNIST: vertical_flip=True).
         The crop is the image's size, or crop_size (semilearn's Semi-Aves: 224 of 256, no
         padding). semisup.data.geometry does the crops and flips.
strong = the weak crop and flips (crop='pad_crop'), or a random resized crop and the flips
         (crop='resized_crop', semilearn's Semi-Aves), then RandAugment over all 14 ops below
         (ops='all') or the 9 without colour ops (ops='no_color', semilearn's
         exclude_color_aug, its MedMNIST sets), then Cutout, in one of two variants:

  fixmatch  FixMatch paper, as reimplemented by kekmodel/FixMatch-pytorch (RandAugmentMC(2, 10)):
            2 ops drawn with replacement from the 14 below, each applied with probability 0.5 at
            an integer magnitude m uniform in 1..10, mapped to start + (end - start) * m / 10 of
            the op's range; then a square of side 0.5 * width (16 px at 32 px) filled with gray
            127, as kekmodel's CutoutAbs. The colour factors use the paper's [0.05, 0.95], which
            is also kekmodel's 0.05 + 0.9 * m / 10 (so the smallest factor drawn is 0.14).
  usb       USB / semilearn RandAugment(3, 5): 3 ops always applied, each value uniform over the
            op's range (semilearn ignores the magnitude argument, "deprecated": its
            RandAugment(3, 10) of Semi-Aves is this same draw); then a square of side round(U(0, 0.5) * width) filled with USB's
            (125, 123, 114).

Each op reproduces the PIL operation the reference codebases call, pixel for pixel (the tests
compare them): ImageEnhance.Brightness/Color/Contrast/Sharpness, ImageOps.autocontrast/equalize/
posterize/solarize, Image.rotate and Image.transform(AFFINE) with nearest resampling. Geometric
ops shear and translate about the top-left corner and rotate about the centre, as PIL does, and
fill uncovered pixels with gray GEOMETRIC_FILL (128, the AutoAugment convention; note that the PIL
references pass no fillcolor and so fill with black).

Known deviations from the per-image references, all deliberate:
  * magnitudes are 1..10 (kekmodel's np.random.randint(1, 10) stops at 9);
  * fixmatch TranslateX/Y moves by 0.03 * m * width rounded to the nearest pixel (kekmodel
    truncates to an integer number of pixels);
  * the cutout square is exactly side x side pixels with a uniform centre, clipped to the image
    on every edge (PIL's ImageDraw.rectangle includes its end point, so the references cut
    side + 1 pixels, and they clip only at the right and bottom);
  * for C = 1 images Color is the identity and the cutout fill is the luma of the fill colour.

Samples are grouped by the op they drew and each op runs once on its whole group, so the number
of tensor operations per batch does not grow with the batch size. On the CPU, torch.where and
uint8 advanced indexing are slow; the code uses arithmetic, index_select and gather instead.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .geometry import check_inputs as _check_inputs
from .geometry import gather_pixels as _gather_pixels
from .geometry import pad_crop, resized_crop
from .geometry import randint as _randint
from .geometry import uniform as _uniform

__all__ = ["weak_augment", "strong_augment", "VARIANTS", "OP_LISTS", "STRONG_CROPS"]

VARIANTS = ("fixmatch", "usb")
GEOMETRIC_FILL = 128
CUTOUT_FILL = {"fixmatch": (127, 127, 127), "usb": (125, 123, 114)}
OPS_PER_SAMPLE = {"fixmatch": 2, "usb": 3}
STRONG_CROPS = ("pad_crop", "resized_crop")   # the strong view's crop (semisup.data.geometry)


# ---------------------------------------------------------------------------------------------
# Public API


def weak_augment(images: Tensor, generator: torch.Generator, *, flip: bool = True,
                 pad_fraction: float = 0.125, vertical_flip: bool = False,
                 crop_size: int | None = None) -> Tensor:
    """Random crop of the reflect-padded images (per-sample offsets; crop_size, default the
    image's size), then horizontal flip with probability 0.5 per sample when `flip`, vertical
    flip likewise when `vertical_flip` (semisup.data.geometry.pad_crop)."""
    return pad_crop(images, generator, pad_fraction=pad_fraction, crop_size=crop_size,
                    horizontal_flip=flip, vertical_flip=vertical_flip)


def strong_augment(images: Tensor, generator: torch.Generator, *, variant: str = "fixmatch",
                   flip: bool = True, pad_fraction: float = 0.125, vertical_flip: bool = False,
                   crop_size: int | None = None, ops: str = "all", crop: str = "pad_crop",
                   resized_crop_scale: tuple[float, float] = (0.08, 1.0),
                   resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """The crop and flips (crop 'pad_crop': weak_augment's; 'resized_crop': a random resized
    crop to crop_size, default the image's size), then RandAugment over the op list `ops`
    ('all' or 'no_color', OP_LISTS), then Cutout, as the `variant` ('fixmatch' or 'usb') does."""
    for name, value, allowed in (("variant", variant, VARIANTS), ("ops", ops, tuple(OP_LISTS)),
                                 ("crop", crop, STRONG_CROPS)):
        if value not in allowed:
            raise ValueError(f"unknown strong augmentation {name} {value!r}; allowed values: "
                             f"{', '.join(repr(each) for each in allowed)}")
    if crop == "resized_crop":
        images = resized_crop(images, generator, size=crop_size or images.shape[-1],
                              scale=resized_crop_scale, ratio=resized_crop_ratio,
                              horizontal_flip=flip, vertical_flip=vertical_flip)
    else:
        images = weak_augment(images, generator, flip=flip, pad_fraction=pad_fraction,
                              vertical_flip=vertical_flip, crop_size=crop_size)
    images = _rand_augment(images, generator, variant, ops)
    return _cutout(images, generator, variant)


# ---------------------------------------------------------------------------------------------
# RandAugment: the 14 ops, the per-sample draws, and applying them grouped by op


def _identity(images: Tensor, values: Tensor) -> Tensor:
    return images


def _brightness(images: Tensor, factors: Tensor) -> Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros_like(images), images, factors)


def _color(images: Tensor, factors: Tensor) -> Tensor:
    """ImageEnhance.Color: blend with the grayscale image (identity for one channel)."""
    return _blend(_grayscale(images), images, factors)


def _contrast(images: Tensor, factors: Tensor) -> Tensor:
    """ImageEnhance.Contrast: blend with the mean of the grayscale image, rounded half up."""
    gray = _grayscale(images)
    mean = gray.sum((1, 2, 3), keepdim=True, dtype=torch.float64) / gray[0].numel()
    return _blend((mean + 0.5).floor(), images, factors)


def _sharpness(images: Tensor, factors: Tensor) -> Tensor:
    """ImageEnhance.Sharpness: blend with PIL's SMOOTH filter, kernel [[1,1,1],[1,5,1],[1,1,1]] / 13
    rounded to nearest, border pixels kept. The sums are integers, exact in float32, and
    sum / 13 is never within 1/26 of a rounding boundary, so the rounding is exact too."""
    return _blend(_smooth_filter(images), images, factors)


def _smooth_filter(images: Tensor) -> Tensor:
    """PIL's ImageFilter.SMOOTH as float32 pixels: [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded to
    nearest, the one-pixel border kept."""
    pixels = images.float()
    row_sums = pixels[..., :, :-2] + pixels[..., :, 1:-1] + pixels[..., :, 2:]
    box_sums = row_sums[..., :-2, :] + row_sums[..., 1:-1, :] + row_sums[..., 2:, :]
    weighted_sums = box_sums + 4 * pixels[..., 1:-1, 1:-1]
    smooth = pixels.clone()
    smooth[..., 1:-1, 1:-1] = (weighted_sums / 13 + 0.5).floor()
    return smooth


def _posterize(images: Tensor, bits: Tensor) -> Tensor:
    """ImageOps.posterize: keep the floor(bits) high bits of every channel."""
    kept_bits = bits.floor().long().clamp(1, 8)
    masks = (256 - 2 ** (8 - kept_bits)).to(torch.uint8)
    return images & masks.view(-1, 1, 1, 1)


def _solarize(images: Tensor, thresholds: Tensor) -> Tensor:
    """ImageOps.solarize: invert the pixels at or above the threshold."""
    inverted = (images >= thresholds.view(-1, 1, 1, 1)).to(torch.uint8)
    return images ^ (inverted * 255)          # x ^ 255 == 255 - x, and much faster than where


def _auto_contrast(images: Tensor, values: Tensor) -> Tensor:
    """ImageOps.autocontrast: stretch each channel's min..max to 0..255 (flat channels unchanged),
    through PIL's lookup table int(i * scale + offset), built in float64 as PIL does."""
    low = images.amin((2, 3)).double().unsqueeze(2)
    high = images.amax((2, 3)).double().unsqueeze(2)
    # A tensor numerator: `255.0 / tensor` multiplies by a rounded reciprocal, unlike PIL.
    scale = torch.where(high > low, low.new_tensor(255.0) / (high - low).clamp(min=1), 1.0)
    offset = torch.where(high > low, -low * scale, 0.0)
    levels = torch.arange(256, dtype=torch.float64, device=images.device)
    return _apply_lookup_tables(images, (levels * scale + offset).clamp(0, 255))


def _equalize(images: Tensor, values: Tensor) -> Tensor:
    """ImageOps.equalize, per channel: lut[i] = (step // 2 + pixels below i) // step with
    step = (pixels - pixels in the highest occupied bin) // 255; identity where step is 0."""
    n, channels, height, width = images.shape
    pixels = images.reshape(n * channels, height * width).long()
    histograms = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    histograms.scatter_add_(1, pixels, torch.ones_like(pixels))
    highest_bin = 255 - (histograms.flip(1) > 0).int().argmax(1, keepdim=True)
    step = (height * width - histograms.gather(1, highest_bin)) // 255
    pixels_below = histograms.cumsum(1) - histograms
    lut = ((step // 2 + pixels_below) // step.clamp(min=1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device))
    return _apply_lookup_tables(images, lut.view(n, channels, 256))


def _rotate(images: Tensor, degrees: Tensor, fill: int = GEOMETRIC_FILL) -> Tensor:
    """Image.rotate(degrees): counter-clockwise about the centre."""
    radians = torch.deg2rad(degrees.double())
    cos, sin = radians.cos(), radians.sin()
    centre_x, centre_y = images.shape[3] / 2, images.shape[2] / 2
    return _affine(images, (cos, -sin, centre_x - cos * centre_x + sin * centre_y,
                            sin, cos, centre_y - sin * centre_x - cos * centre_y), fill)


def _shear_x(images: Tensor, shears: Tensor) -> Tensor:
    return _affine(images, (1, shears, 0, 0, 1, 0))


def _shear_y(images: Tensor, shears: Tensor) -> Tensor:
    return _affine(images, (1, 0, 0, shears, 1, 0))


def _translate_x(images: Tensor, fractions: Tensor) -> Tensor:
    return _affine(images, (1, 0, fractions * images.shape[3], 0, 1, 0))


def _translate_y(images: Tensor, fractions: Tensor) -> Tensor:
    return _affine(images, (1, 0, 0, 0, 1, fractions * images.shape[2]))


@dataclass(frozen=True)
class _Op:
    name: str
    apply: Callable[[Tensor, Tensor], Tensor]   # (images (n, C, H, W), values (n,)) -> images
    start: float = 0.0                          # value at magnitude 0
    end: float = 0.0                            # value at the largest magnitude (10 in FixMatch)
    signed: bool = False                        # the value gets a random sign

    def value(self, magnitude: Tensor, sign: Tensor) -> Tensor:
        """magnitude in [0, 1] (FixMatch's m / 10, or uniform for USB) -> the op's argument."""
        value = self.start + (self.end - self.start) * magnitude
        return value * sign if self.signed else value


# Order and ranges of FixMatch's Table 12 / kekmodel's fixmatch_augment_pool / USB's augment_list.
# A signed op with range 0..end covers -end..end. Solarize runs from 256 down so that a larger
# FixMatch magnitude inverts more pixels (kekmodel: threshold 256 - 25.6 m).
_OPS = (
    _Op("AutoContrast", _auto_contrast),
    _Op("Brightness", _brightness, 0.05, 0.95),
    _Op("Color", _color, 0.05, 0.95),
    _Op("Contrast", _contrast, 0.05, 0.95),
    _Op("Equalize", _equalize),
    _Op("Identity", _identity),
    _Op("Posterize", _posterize, 4, 8),
    _Op("Rotate", _rotate, 0, 30, signed=True),
    _Op("Sharpness", _sharpness, 0.05, 0.95),
    _Op("ShearX", _shear_x, 0, 0.3, signed=True),
    _Op("ShearY", _shear_y, 0, 0.3, signed=True),
    _Op("Solarize", _solarize, 256, 0),
    _Op("TranslateX", _translate_x, 0, 0.3, signed=True),
    _Op("TranslateY", _translate_y, 0, 0.3, signed=True),
)
_NOT_APPLIED = len(_OPS)   # op index of a sample whose drawn op was skipped (FixMatch's p = 0.5)
# The lists RandAugment draws from, as indices into _OPS. no_color: semilearn 0.3.2's
# augment_list_no_color (augmentation/randaugment.py; RandAugment(exclude_color_aug=True), its
# strong view of the MedMNIST sets, TissueMNIST among them): without AutoContrast, Color,
# Contrast, Posterize and Solarize, so 9 ops; Brightness and Equalize stay, as there.
NO_COLOR_OPS = ("Brightness", "Equalize", "Identity", "Rotate", "Sharpness", "ShearX", "ShearY",
                "TranslateX", "TranslateY")
OP_LISTS = {"all": tuple(range(len(_OPS))),
            "no_color": tuple(index for index, op in enumerate(_OPS) if op.name in NO_COLOR_OPS)}


def _rand_augment(images: Tensor, generator: torch.Generator, variant: str,
                  ops: str = "all") -> Tensor:
    """Apply OPS_PER_SAMPLE[variant] ops in turn; each sample draws its own ops (uniformly from
    OP_LISTS[ops]) and magnitudes. The draws do not depend on the op list, only their meaning."""
    shape = (images.shape[0], OPS_PER_SAMPLE[variant])
    allowed = torch.tensor(OP_LISTS[ops], device=images.device)
    chosen_ops = allowed[_randint(generator, images, 0, len(allowed), shape)]
    if variant == "fixmatch":
        skipped = _uniform(generator, images, shape) >= 0.5
        chosen_ops = chosen_ops.masked_fill(skipped, _NOT_APPLIED)
        magnitudes = _randint(generator, images, 1, 11, shape) / 10
    else:
        magnitudes = _uniform(generator, images, shape)
    signs = torch.where(_uniform(generator, images, shape) < 0.5, -1.0, 1.0)
    for turn in range(shape[1]):
        images = _apply_chosen_ops(images, chosen_ops[:, turn], magnitudes[:, turn], signs[:, turn])
    return images


def _apply_chosen_ops(images: Tensor, op_indices: Tensor, magnitudes: Tensor,
                      signs: Tensor, grouped: bool | None = None) -> Tensor:
    """Sample k becomes _OPS[op_indices[k]] applied to it (op index len(_OPS): left as it is).

    Two equivalent strategies (every op acts on each sample independently):
    - grouped (CPU default): sort the samples by op so that each op runs once on a contiguous
      block; reading the block sizes is a host synchronisation, free on the CPU.
    - select (CUDA default): run every op on the whole batch and keep each sample's chosen
      result; 14x the (tiny) arithmetic, but no host synchronisation in the training step.
    """
    if grouped is None:
        grouped = images.device.type == "cpu"
    if not grouped:
        result = images
        for index, op in enumerate(_OPS):
            if op.apply is not _identity:
                chosen = (op_indices == index).view(-1, 1, 1, 1)
                result = torch.where(chosen, op.apply(images, op.value(magnitudes, signs)), result)
        return result
    order = torch.argsort(op_indices, stable=True)
    block_sizes = torch.bincount(op_indices, minlength=len(_OPS) + 1).tolist()
    images, magnitudes, signs = images.index_select(0, order), magnitudes[order], signs[order]
    block_starts = [0, *itertools.accumulate(block_sizes)]
    for op, start, end in zip(_OPS, block_starts, block_starts[1:]):
        if end > start and op.apply is not _identity:
            values = op.value(magnitudes[start:end], signs[start:end])
            images[start:end] = op.apply(images[start:end], values)
    return images.index_select(0, torch.argsort(order))


# ---------------------------------------------------------------------------------------------
# Cutout


def _cutout(images: Tensor, generator: torch.Generator, variant: str) -> Tensor:
    """Fill a side x side square with a uniform centre, clipped to the image, per sample."""
    n, channels, height, width = images.shape
    if variant == "fixmatch":
        sides = torch.full((n, 1, 1), round(0.5 * width), device=images.device)
    else:
        sides = (_uniform(generator, images, (n, 1, 1)) * 0.5 * width).round()
    tops = (_uniform(generator, images, (n, 1, 1)) * height - sides / 2).floor()
    lefts = (_uniform(generator, images, (n, 1, 1)) * width - sides / 2).floor()
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    columns = torch.arange(width, device=images.device).view(1, 1, width)
    inside = (rows >= tops) & (rows < tops + sides) & (columns >= lefts) & (columns < lefts + sides)
    fill = torch.tensor(CUTOUT_FILL[variant], dtype=torch.uint8, device=images.device)
    fill = fill.view(1, 3, 1, 1) if channels == 3 else _grayscale(fill.view(1, 3, 1, 1))
    cut = inside.unsqueeze(1).to(torch.uint8)   # arithmetic, as torch.where is slow on the CPU
    return images * (1 - cut) + fill.to(torch.uint8) * cut


# ---------------------------------------------------------------------------------------------
# Building blocks


def _blend(degenerate: Tensor, images: Tensor, factors: Tensor) -> Tensor:
    """PIL's Image.blend(degenerate, images, factor): float32 arithmetic in PIL's order, then
    truncation, so that the results equal PIL's bit for bit."""
    degenerate = degenerate.float()
    factors = factors.float().view(-1, 1, 1, 1)
    blended = degenerate + factors * (images.float() - degenerate)
    return blended.clamp(0, 255).to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """PIL's convert('L'): (19595 R + 38470 G + 7471 B + 2**15) >> 16, which is the rounded
    L = R 299/1000 + G 587/1000 + B 114/1000; int32 (n, 1, H, W)."""
    if images.shape[1] == 1:
        return images.int()
    red, green, blue = images.int().unbind(1)
    return ((19595 * red + 38470 * green + 7471 * blue + 32768) >> 16).unsqueeze(1)


def _affine(images: Tensor, coefficients: tuple, fill: int = GEOMETRIC_FILL) -> Tensor:
    """PIL's Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST, fillcolor=fill)
    per sample: output pixel (x, y) copies the input pixel containing the point
    (a X + b Y + c, d X + e Y + f) at its centre X = x + 0.5, Y = y + 0.5, or gets the fill when
    that point lies outside. Each coefficient is a number or a per-sample tensor (n,)."""
    n, _, height, width = images.shape
    a, b, c, d, e, f = (torch.as_tensor(k, dtype=torch.float64, device=images.device).view(-1, 1, 1)
                        for k in coefficients)
    centre_y = torch.arange(height, device=images.device, dtype=torch.float64).view(1, -1, 1) + 0.5
    centre_x = torch.arange(width, device=images.device, dtype=torch.float64).view(1, 1, -1) + 0.5
    source_columns = (a * centre_x + b * centre_y + c).floor().long()
    source_rows = (d * centre_x + e * centre_y + f).floor().long()
    inside = ((source_columns >= 0) & (source_columns < width)
              & (source_rows >= 0) & (source_rows < height))
    return _gather_pixels(images, source_rows.clamp(0, height - 1),
                          source_columns.clamp(0, width - 1), fill_where=~inside, fill=fill)


def _apply_lookup_tables(images: Tensor, tables: Tensor) -> Tensor:
    """out[k, c] = tables[k, c, images[k, c]]: PIL's Image.point with one table per channel; the
    tables' values are truncated to integers, as PIL's are."""
    n, channels, height, width = images.shape
    tables = tables.to(torch.uint8).reshape(n, tables.shape[1], 256).expand(n, channels, 256)
    pixels = images.reshape(n, channels, height * width).long()
    return tables.gather(2, pixels).view(images.shape)
