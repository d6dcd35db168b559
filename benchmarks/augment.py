"""Images per second of strong augmentation at 32x32x3: the conventional per-image PIL pipeline
(crop/flip, RandAugment, Cutout applied image by image, as the reference codebases do in their
Dataset.__getitem__) against the batched semisup.data.augment.strong_augment.

    python benchmarks/augment.py [--device cpu|cuda] [--batch 448] [--repeats 20] [--threads N]

The PIL path always runs on the CPU in this one process (a DataLoader would spread it over its
worker processes, up to one per core); the batched path runs on --device with --threads threads.
Both start from a uint8 batch (N, 3, 32, 32) and end with one, so conversions are counted.
Each figure is the median over --repeats timed batches, after two warm-up batches; the two
paths alternate batch by batch, so that load from other processes hits both alike.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from semisup.data.augment import CUTOUT_FILL, GEOMETRIC_FILL, OPS_PER_SAMPLE, VARIANTS, _OPS
from semisup.data.augment import strong_augment

# The same 14 ops, per image with PIL; ranges and variants come from semisup.data.augment._OPS.
FILL = (GEOMETRIC_FILL,) * 3
PIL_OPS = {
    "AutoContrast": lambda image, value: ImageOps.autocontrast(image),
    "Brightness": lambda image, value: ImageEnhance.Brightness(image).enhance(value),
    "Color": lambda image, value: ImageEnhance.Color(image).enhance(value),
    "Contrast": lambda image, value: ImageEnhance.Contrast(image).enhance(value),
    "Equalize": lambda image, value: ImageOps.equalize(image),
    "Identity": lambda image, value: image,
    "Posterize": lambda image, value: ImageOps.posterize(image, int(value)),
    "Rotate": lambda image, value: image.rotate(value, fillcolor=FILL),
    "Sharpness": lambda image, value: ImageEnhance.Sharpness(image).enhance(value),
    "ShearX": lambda image, value: _pil_affine(image, (1, value, 0, 0, 1, 0)),
    "ShearY": lambda image, value: _pil_affine(image, (1, 0, 0, value, 1, 0)),
    "Solarize": lambda image, value: ImageOps.solarize(image, value),
    "TranslateX": lambda image, value: _pil_affine(image, (1, 0, value * image.width, 0, 1, 0)),
    "TranslateY": lambda image, value: _pil_affine(image, (1, 0, 0, 0, 1, value * image.height)),
}


def _pil_affine(image: Image.Image, coefficients: tuple) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, fillcolor=FILL)


def pil_weak_augment(array: np.ndarray, rng: random.Random, pad: int = 4) -> Image.Image:
    """Reflect-pad, random crop, horizontal flip with probability 0.5: one HWC uint8 image."""
    height, width, _ = array.shape
    padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    image = Image.fromarray(padded[top:top + height, left:left + width])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def pil_strong_augment(array: np.ndarray, variant: str, rng: random.Random,
                       pad: int = 4) -> np.ndarray:
    """One HWC uint8 image through crop/flip, RandAugment and Cutout, the per-image way."""
    height, width, _ = array.shape
    image = pil_weak_augment(array, rng, pad)
    for op in rng.choices(_OPS, k=OPS_PER_SAMPLE[variant]):
        if variant == "fixmatch" and rng.random() < 0.5:
            continue
        magnitude = rng.randint(1, 10) / 10 if variant == "fixmatch" else rng.random()
        value = op.start + (op.end - op.start) * magnitude
        if op.signed and rng.random() < 0.5:
            value = -value
        image = PIL_OPS[op.name](image, value)
    side = round(0.5 * width) if variant == "fixmatch" else round(rng.random() * 0.5 * width)
    left, top = int(rng.random() * width - side / 2), int(rng.random() * height - side / 2)
    if side > 0:
        image = image.copy()
        ImageDraw.Draw(image).rectangle((left, top, left + side - 1, top + side - 1),
                                        CUTOUT_FILL[variant])
    return np.asarray(image)


def run_pil(images: torch.Tensor, variant: str, rng: random.Random) -> torch.Tensor:
    arrays = images.permute(0, 2, 3, 1).numpy()          # as datasets store them: N, H, W, C
    augmented = [pil_strong_augment(array, variant, rng) for array in arrays]
    return torch.from_numpy(np.stack(augmented)).permute(0, 3, 1, 2)


def seconds_per_batch(augment, images: torch.Tensor) -> float:
    start = time.perf_counter()
    augment(images)
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
    return time.perf_counter() - start


def images_per_second(pipelines: dict, repeats: int, batch: int) -> dict:
    """Median images/s of each (augment, images) pipeline; the pipelines take turns batch by
    batch, so that a busy machine slows them alike."""
    seconds = {name: [] for name in pipelines}
    for repeat in range(repeats + 2):
        for name, (augment, images) in pipelines.items():
            elapsed = seconds_per_batch(augment, images)
            if repeat >= 2:
                seconds[name].append(elapsed)
    return {name: batch / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=448, help="images per batch (64 * mu=7)")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per figure")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads for the batched path (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu_images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(args.seed))
    device_images = cpu_images.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed)

    print(f"strong augmentation, {args.batch} images of 32x32x3 per batch, median of "
          f"{args.repeats} batches; batched path on {device} with {args.threads} torch threads, "
          f"PIL path on 1 CPU process")
    print(f"{'variant':10s} {'PIL per image (img/s)':>22s} {'batched (img/s)':>16s} {'ratio':>7s}")
    for variant in VARIANTS:
        speeds = images_per_second({
            # the lambdas run within this iteration (B023 does not apply)
            "pil": (lambda batch: run_pil(batch, variant, rng), cpu_images),  # noqa: B023
            "batched": (lambda batch: strong_augment(batch, generator, variant=variant),  # noqa: B023
                        device_images),
        }, args.repeats, args.batch)
        print(f"{variant:10s} {speeds['pil']:22,.0f} {speeds['batched']:16,.0f} "
              f"{speeds['batched'] / speeds['pil']:6.1f}x")


if __name__ == "__main__":
    main()
