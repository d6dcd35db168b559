"""Images per second of strong augmentation at 32x32x3: the conventional per-image PIL pipeline
(crop/flip, RandAugment, Cutout applied image by image, as the reference codebases do in their
Dataset.__getitem__) against the batched semisup.data.augment.strong_augment; and CTAugment's
strong view (crop/flip, 2 ops with their bins drawn by weight, cutout), per image as FixMatch-TF's
libml/ctaugment.py does it against the batched semisup.data.ctaugment.CTAugment.

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
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from semisup.data.augment import CUTOUT_FILL, GEOMETRIC_FILL, OPS_PER_SAMPLE, VARIANTS, _OPS
from semisup.data.augment import strong_augment, weak_augment
from semisup.data.ctaugment import CTAugment, CTAugmentSettings

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


# CTAugment per image, as FixMatch-TF's libml/ctaugment.py: level in [0, 1) -> PIL call.
def _cta_blend(op):
    return lambda image, level: Image.blend(image, op(image), level)


def _cta_enhance(enhancer):
    return lambda image, level: enhancer(image).enhance(0.1 + 1.9 * level)


def _cta_affine(coefficients):
    return lambda image, level: image.transform(image.size, Image.Transform.AFFINE,
                                                coefficients((2 * level - 1) * 0.3))


def _cta_rescale(image, scale, method):
    width, height = image.size
    scale *= 0.25
    box = (scale * width, scale * height, width * (1 - scale), height * (1 - scale))
    filters = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR,
               Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.NEAREST)
    return image.crop(box).resize(image.size, filters[int(method * 5.99)])


def _cta_cutout(image, level, rng=None):
    """The reference's gray 127 square about a uniform pixel (drawn with ImageDraw: faster than
    its pixel-by-pixel loop, so the PIL figure is if anything flattered)."""
    half = (1 + int(level * min(image.size) * 0.499)) // 2
    column, row = np.random.randint(image.size[0]), np.random.randint(image.size[1])
    if half > 0:
        image = image.copy()
        ImageDraw.Draw(image).rectangle((column - half, row - half, column + half - 1,
                                         row + half - 1), (127, 127, 127))
    return image


PIL_CTA_OPS = {   # name: (function, bins per argument), FixMatch-TF's order
    "autocontrast": (_cta_blend(ImageOps.autocontrast), (17,)),
    "blur": (_cta_blend(lambda image: image.filter(ImageFilter.BLUR)), (17,)),
    "brightness": (_cta_enhance(ImageEnhance.Brightness), (17,)),
    "color": (_cta_enhance(ImageEnhance.Color), (17,)),
    "contrast": (_cta_enhance(ImageEnhance.Contrast), (17,)),
    "cutout": (_cta_cutout, (17,)),
    "equalize": (_cta_blend(ImageOps.equalize), (17,)),
    "invert": (_cta_blend(ImageOps.invert), (17,)),
    "identity": (lambda image: image, ()),
    "posterize": (lambda image, level: ImageOps.posterize(image, 1 + int(level * 7.999)), (8,)),
    "rescale": (_cta_rescale, (17, 6)),
    "rotate": (lambda image, level: image.rotate(int(np.round((2 * level - 1) * 45))), (17,)),
    "sharpness": (_cta_enhance(ImageEnhance.Sharpness), (17,)),
    "shear_x": (_cta_affine(lambda shear: (1, shear, 0, 0, 1, 0)), (17,)),
    "shear_y": (_cta_affine(lambda shear: (1, 0, 0, shear, 1, 0)), (17,)),
    "smooth": (_cta_blend(lambda image: image.filter(ImageFilter.SMOOTH)), (17,)),
    "solarize": (lambda image, level: ImageOps.solarize(image, int(level * 255.999)), (17,)),
    "translate_x": (_cta_affine(lambda delta: (1, 0, delta, 0, 1, 0)), (17,)),
    "translate_y": (_cta_affine(lambda delta: (1, 0, 0, 0, 1, delta)), (17,)),
}


def pil_ctaugment(array: np.ndarray, rng: random.Random, rates: dict, depth: int = 2,
                  threshold: float = 0.8, decay: float = 0.99) -> np.ndarray:
    """One HWC uint8 image through crop/flip, CTAugment's training policy (its per-image draws
    with random and numpy, as the reference) and the final cutout."""
    image = pil_weak_augment(array, rng)
    for _ in range(depth):
        name = rng.choice(list(PIL_CTA_OPS))
        op, bins = PIL_CTA_OPS[name]
        levels = []
        for rate, uniform in zip(rates[name], np.random.uniform(0, 1, len(bins)), strict=True):
            weights = rate + (1 - decay)
            weights = weights / weights.max()
            weights[weights < threshold] = 0
            levels.append((np.random.choice(len(weights), p=weights / weights.sum()) + uniform)
                          / len(weights))
        image = op(image, *levels)
    return np.asarray(_cta_cutout(image, 1.0))


def run_pil(images: torch.Tensor, variant: str, rng: random.Random) -> torch.Tensor:
    arrays = images.permute(0, 2, 3, 1).numpy()          # as datasets store them: N, H, W, C
    if variant == "ctaugment":
        rates = {name: [np.ones(count) for count in bins] for name, (_, bins) in PIL_CTA_OPS.items()}
        augmented = [pil_ctaugment(array, rng, rates) for array in arrays]
    else:
        augmented = [pil_strong_augment(array, variant, rng) for array in arrays]
    return torch.from_numpy(np.stack(augmented)).permute(0, 3, 1, 2)


def batched_strong_augment(variant: str, generator: torch.Generator):
    """The batched strong view of `variant`, as the image data layer makes it."""
    if variant != "ctaugment":
        return lambda batch: strong_augment(batch, generator, variant=variant)
    augmenter = CTAugment(CTAugmentSettings(depth=2, threshold=0.8, decay=0.99,
                                            probe_network="ema", translate="pixels"),
                          generator.device)
    return lambda batch: augmenter.augment(weak_augment(batch, generator), generator)


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
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "ctaugment"],
                        choices=[*VARIANTS, "ctaugment"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu_images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(args.seed))
    device_images = cpu_images.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed)
    np.random.seed(args.seed)   # CTAugment's per-image draws use numpy, as FixMatch-TF's

    print(f"strong augmentation, {args.batch} images of 32x32x3 per batch, median of "
          f"{args.repeats} batches; batched path on {device} with {args.threads} torch threads, "
          f"PIL path on 1 CPU process")
    print(f"{'variant':10s} {'PIL per image (img/s)':>22s} {'batched (img/s)':>16s} {'ratio':>7s}")
    for variant in args.variants:
        speeds = images_per_second({
            # the lambdas run within this iteration (B023 does not apply)
            "pil": (lambda batch: run_pil(batch, variant, rng), cpu_images),  # noqa: B023
            "batched": (batched_strong_augment(variant, generator), device_images),
        }, args.repeats, args.batch)
        print(f"{variant:10s} {speeds['pil']:22,.0f} {speeds['batched']:16,.0f} "
              f"{speeds['batched'] / speeds['pil']:6.1f}x")


if __name__ == "__main__":
    main()
