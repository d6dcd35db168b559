"""Rotations of image batches for the rotation-prediction losses of ReMixMatch and CRMatch.

Rotation k turns an image by k * 90 degrees counter-clockwise (torchvision's `rotate` and
semilearn's `rotate_img` direction; label k for 0, 90, 180, 270 degrees). A quarter turn of a square
image permutes its pixels, so rotating a normalised batch on the device is exact.
"""
from __future__ import annotations

import torch
from torch import Tensor

NUM_ROTATIONS = 4


def _quarter_turns(images: Tensor) -> list[Tensor]:
    if images.dim() < 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got a batch of shape "
                         f"{tuple(images.shape)}; set the rotation weight to 0 for other inputs")
    return [torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)]


def all_rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """Every image at 0, 90, 180 and 270 degrees: four blocks of the batch in that order, and
    their labels 0..3 (CRMatch's RotNet batch)."""
    rotated = torch.cat(_quarter_turns(images))
    turns = torch.arange(NUM_ROTATIONS, device=images.device)
    labels = turns[:, None].expand(NUM_ROTATIONS, len(images)).reshape(-1)
    return rotated, labels


def rotate_randomly(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each image turned by its own k, uniform over 0..3, drawn from `generator` on the images'
    device (all four turns are made and one is picked: no host read). Returns the images and k."""
    turns = torch.randint(NUM_ROTATIONS, (len(images),), generator=generator, device=images.device)
    rotations = torch.stack(_quarter_turns(images))
    return rotations[turns, torch.arange(len(images), device=images.device)], turns
