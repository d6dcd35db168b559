"""CTAugment's 19 ops on whole uint8 batches (N, C, H, W), each equal to the PIL call of
FixMatch-TF's libml/ctaugment.py at the same level (semisup.data.ctaugment describes them and the
augmenter that draws their levels). An op is (images, levels (n, 2) float64 in [0, 1), cutout
centres (n, 2) as fractions of the height and width) -> images; most read levels[:, 0] only.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import augment as ops

CUTOUT_FILL = 127
GEOMETRIC_FILL = 0          # PIL's transform and rotate without a fillcolor


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


def cutout(images: Tensor, levels: Tensor, centres: Tensor) -> Tensor:
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
        """(n, L, size in) lines times the weights: exact integer sums in float64, then
        Pillow's clip8 of (sum + half) >> 22."""
        sums = torch.bmm(lines, weights.transpose(1, 2))
        return ((sums + (1 << PRECISION_BITS - 1)) / (1 << PRECISION_BITS)).floor().clamp(0, 255)

    channels = images.shape[1]
    rows = images.double().reshape(n, channels * height, width)
    horizontal = resample(rows, line_weights(width)).view(n, channels, height, width)  # first
    columns = horizontal.transpose(2, 3).reshape(n, channels * width, height)
    vertical = resample(columns, line_weights(height)).view(n, channels, width, height)
    return vertical.transpose(2, 3).to(torch.uint8)


@dataclass(frozen=True)
class _CTAOp:
    name: str
    bins: tuple[int, ...]
    apply: Callable[[Tensor, Tensor, Tensor], Tensor] | None     # None: identity


def make_ops(translate: str) -> tuple[_CTAOp, ...]:
    """FixMatch-TF's OPS in its order (the registration order of libml/ctaugment.py)."""
    return (
        _CTAOp("autocontrast", (17,), _blended(lambda x: ops._auto_contrast(x, None))),
        _CTAOp("blur", (17,), _blended(_blur_filter)),
        _CTAOp("brightness", (17,), _enhanced(ops._brightness)),
        _CTAOp("color", (17,), _enhanced(ops._color)),
        _CTAOp("contrast", (17,), _enhanced(ops._contrast)),
        _CTAOp("cutout", (17,), cutout),
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


OP_NAMES = tuple(op.name for op in make_ops("pixels"))
