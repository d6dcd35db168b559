"""Where each pixel of a view comes from: the crops and flips of the image views, on whole uint8
batches (N, C, H, W) on the training device, every random choice per sample from the caller's
seeded torch.Generator (semisup.data.augment builds the weak and strong views on these).

pad_crop      torchvision's RandomCrop(crop_size, padding=pad, padding_mode='reflect'), then
              RandomHorizontalFlip and, where asked, RandomVerticalFlip (semilearn 0.3.2 flips
              EuroSAT and TissueMNIST vertically too: cv_datasets/eurosat.py, medmnist.py). The
              crop is the image's own size unless crop_size is given (Semi-Aves: 224 of 256).
resized_crop  semilearn's RandomResizedCropAndInterpolation (timm's; augmentation/transforms.py)
              with its defaults, the strong view of Semi-Aves (cv_datasets/aves.py): a box of
              area U(scale) of the image and aspect ratio exp(U(log ratio)), the first of ten
              draws that fits (else the whole image clipped to the ratio), at a uniform offset,
              resized to size x size with bilinear interpolation; then the flips.
centre_crop   torchvision's CenterCrop (semilearn's evaluation view of Semi-Aves).

Known deviation, deliberate: the resized crop interpolates bilinearly between the two nearest
pixels of each axis, as PIL does when it enlarges; where the box is larger than the output (a
shrink of at most 256/224 per side at Semi-Aves' sizes), PIL widens its filter (antialiasing)
and this does not.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["pad_crop", "resized_crop", "resized_crop_boxes", "resize_boxes", "centre_crop",
           "RESIZED_CROP_ATTEMPTS"]

RESIZED_CROP_ATTEMPTS = 10   # timm's and torchvision's get_params


def pad_crop(images: Tensor, generator: torch.Generator, *, pad_fraction: float,
             crop_size: int | None = None, horizontal_flip: bool = True,
             vertical_flip: bool = False) -> Tensor:
    """A crop_size (default: the image's size) crop at a uniform offset of the images padded by
    round(pad_fraction * width) reflected pixels per side, then each flip with probability 0.5
    per sample. Draws, in order: row offsets, column offsets, horizontal, vertical flips (only
    those asked for: without a vertical flip the draws are those of the crop and flip alone)."""
    check_inputs(images, generator)
    n, _, height, width = images.shape
    pad = round(pad_fraction * width)
    if not 0 <= pad < min(height, width):
        raise ValueError(f"pad_fraction={pad_fraction} pads {pad} pixels, but reflect padding "
                         f"needs fewer than the image side ({min(height, width)})")
    out_height, out_width = (height, width) if crop_size is None else (crop_size, crop_size)
    if out_height > height + 2 * pad or out_width > width + 2 * pad:
        raise ValueError(f"crop_size={crop_size} is larger than the {height}x{width} images "
                         f"with {pad} px of padding; crop at most the image's size, or load the "
                         f"images larger (the dataset's image_size)")
    row_offsets = randint(generator, images, 0, height + 2 * pad - out_height + 1, (n, 1))
    column_offsets = randint(generator, images, 0, width + 2 * pad - out_width + 1, (n, 1))
    rows = reflect(torch.arange(out_height, device=images.device) + row_offsets - pad, height)
    columns = reflect(torch.arange(out_width, device=images.device) + column_offsets - pad, width)
    rows, columns = random_flips(rows, columns, generator, horizontal_flip, vertical_flip)
    return gather_pixels(images, rows[:, :, None], columns[:, None, :])


def resized_crop(images: Tensor, generator: torch.Generator, *, size: int,
                 scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), horizontal_flip: bool = True,
                 vertical_flip: bool = False) -> Tensor:
    """semilearn's RandomResizedCropAndInterpolation(size, scale, ratio, 'bilinear') per sample,
    then the flips. Draws, in order: the boxes (resized_crop_boxes), then the flips asked for."""
    check_inputs(images, generator)
    boxes = resized_crop_boxes(images, generator, scale=scale, ratio=ratio)
    flips = _flip_draws(generator, images, horizontal_flip, vertical_flip)
    return resize_boxes(images, *boxes, size=size, flip_rows=flips.get("vertical"),
                        flip_columns=flips.get("horizontal"))


def resized_crop_boxes(images: Tensor, generator: torch.Generator, *, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """timm's RandomResizedCropAndInterpolation.get_params per sample: (tops, lefts, heights,
    widths), each (n,). Draws RESIZED_CROP_ATTEMPTS areas, then as many log ratios per sample,
    keeps the first box that fits (else the whole image clipped to the ratio range), then draws
    its row and column offsets uniformly."""
    if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"resized crop: scale {tuple(scale)} and ratio {tuple(ratio)} must each "
                         f"be a range (low, high) of positive numbers with low <= high")
    n, _, height, width = images.shape
    shape = (n, RESIZED_CROP_ATTEMPTS)
    areas = (scale[0] + (scale[1] - scale[0]) * uniform(generator, images, shape)) * height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniform(generator, images, shape))
    widths = torch.sqrt(areas * aspect).round()
    heights = torch.sqrt(areas / aspect).round()
    fits = (widths >= 1) & (widths <= width) & (heights >= 1) & (heights <= height)
    first_fit = fits.int().argmax(1, keepdim=True)   # argmax returns the first maximum
    fallback_height, fallback_width = _whole_image_box(height, width, ratio)
    found = fits.any(1)
    heights = torch.where(found, heights.gather(1, first_fit)[:, 0], fallback_height)
    widths = torch.where(found, widths.gather(1, first_fit)[:, 0], fallback_width)
    tops = (uniform(generator, images, (n,)) * (height - heights + 1)).floor()
    lefts = (uniform(generator, images, (n,)) * (width - widths + 1)).floor()
    return tops.long(), lefts.long(), heights.long(), widths.long()


def resize_boxes(images: Tensor, tops: Tensor, lefts: Tensor, heights: Tensor, widths: Tensor,
                 *, size: int, flip_rows: Tensor | None = None,
                 flip_columns: Tensor | None = None) -> Tensor:
    """Each sample's box resized to size x size with bilinear interpolation (PIL's when it
    enlarges: pixel centres aligned, the box's edge pixels repeated), rounded to uint8; rows
    and columns reversed where flip_rows / flip_columns (n, 1) are true."""
    rows = tuple(_flipped(tap, flip_rows) for tap in _bilinear_taps(tops, heights, size))
    columns = tuple(_flipped(tap, flip_columns) for tap in _bilinear_taps(lefts, widths, size))
    (row_low, row_high, row_weight), (column_low, column_high, column_weight) = rows, columns
    pixels = images.float()
    upper = _gather_columns(pixels, row_low, column_low, column_high, column_weight)
    lower = _gather_columns(pixels, row_high, column_low, column_high, column_weight)
    blended = upper + row_weight[:, None, :, None] * (lower - upper)
    return (blended + 0.5).floor().clamp(0, 255).to(torch.uint8)


def centre_crop(images: Tensor, size: int) -> Tensor:
    """torchvision's CenterCrop(size): the offset int(round((side - size) / 2)) on each axis."""
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"a centre crop of {size} px needs images at least that large, not "
                         f"{height}x{width}; load the images larger (the dataset's image_size)")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


# ---------------------------------------------------------------------------------------------
# Flips and resampling


def random_flips(rows: Tensor, columns: Tensor, generator: torch.Generator, horizontal: bool,
                 vertical: bool) -> tuple[Tensor, Tensor]:
    """Reverse each sample's column indices (horizontal flip) and row indices (vertical flip)
    with probability 0.5 each; rows (n, H) and columns (n, W) index the source pixels."""
    flips = _flip_draws(generator, rows, horizontal, vertical)
    return _flipped(rows, flips.get("vertical")), _flipped(columns, flips.get("horizontal"))


def _flip_draws(generator: torch.Generator, like: Tensor, horizontal: bool,
                vertical: bool) -> dict[str, Tensor]:
    """Which samples flip, horizontal drawn before vertical: (n, 1) booleans per flip asked for."""
    n = like.shape[0]
    draws = {}
    if horizontal:
        draws["horizontal"] = uniform(generator, like, (n, 1)) < 0.5
    if vertical:
        draws["vertical"] = uniform(generator, like, (n, 1)) < 0.5
    return draws


def _flipped(index: Tensor, flipped: Tensor | None) -> Tensor:
    if flipped is None:
        return index
    index = index.expand(flipped.shape[0], -1)
    return torch.where(flipped, index.flip(1), index)


def _whole_image_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """timm's fallback when no draw fits: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _bilinear_taps(starts: Tensor, lengths: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """For output pixels 0..size-1 along one axis of a box [start, start + length): the two
    source pixels (n, size) and the weight of the second, at the source coordinate
    start + (k + 0.5) length / size - 0.5 (pixel centres aligned), clamped into the box."""
    centres = torch.arange(size, device=starts.device, dtype=torch.float64) + 0.5
    coordinates = (centres[None, :] * (lengths[:, None].double() / size) - 0.5).clamp(min=0)
    low = coordinates.floor()
    weight = (coordinates - low).float()
    last = (lengths[:, None] - 1).double()
    low_index = (starts[:, None] + low.clamp(max=last)).long()
    high_index = (starts[:, None] + (low + 1).clamp(max=last)).long()
    return low_index, high_index, weight


def _gather_columns(pixels: Tensor, rows: Tensor, column_low: Tensor, column_high: Tensor,
                    column_weight: Tensor) -> Tensor:
    """float pixels of source rows (n, h) blended between two source columns (n, w)."""
    low = gather_pixels(pixels, rows[:, :, None], column_low[:, None, :])
    high = gather_pixels(pixels, rows[:, :, None], column_high[:, None, :])
    return low + column_weight[:, None, None, :] * (high - low)


# ---------------------------------------------------------------------------------------------
# Building blocks (semisup.data.augment's ops use them too)


def gather_pixels(images: Tensor, rows: Tensor, columns: Tensor,
                  fill_where: Tensor | None = None, fill: int = 128) -> Tensor:
    """out[k, :, y, x] = images[k, :, rows[k, y, x], columns[k, y, x]], or `fill` where
    fill_where[k, y, x]; the indices broadcast to (n, out H, out W), the output's size. The fill
    is an extra pixel appended to every image, so one gather does both."""
    n, channels, height, width = images.shape
    flat_index = rows * width + columns
    out_height, out_width = flat_index.shape[-2:]
    flat_images = images.reshape(n, channels, height * width)
    flat_index = flat_index.expand(n, out_height, out_width).reshape(n, 1, -1)
    if fill_where is not None:
        fill_pixel = flat_images.new_full((n, channels, 1), fill)
        flat_images = torch.cat([flat_images, fill_pixel], 2)
        fill_where = fill_where.expand(n, out_height, out_width).reshape(n, 1, -1)
        flat_index = flat_index.masked_fill(fill_where, height * width)
    return flat_images.gather(2, flat_index.expand(n, channels, -1)).view(
        n, channels, out_height, out_width)


def reflect(index: Tensor, size: int) -> Tensor:
    """Reflect out-of-range indices about the first and last pixel (edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def randint(generator: torch.Generator, like: Tensor, low: int, high: int, shape: tuple) -> Tensor:
    return torch.randint(low, high, shape, generator=generator, device=like.device)


def uniform(generator: torch.Generator, like: Tensor, shape: tuple) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device)


def check_inputs(images: Tensor, generator: torch.Generator) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"augmentation expects uint8 images (N, C, H, W) with C = 1 or 3, got "
                         f"{images.dtype} of shape {tuple(images.shape)}")
    if generator.device.type != images.device.type:
        raise ValueError(f"the generator is on {generator.device} but the images are on "
                         f"{images.device}; create it with torch.Generator(device=images.device)")
