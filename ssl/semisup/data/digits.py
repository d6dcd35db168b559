"""scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn): the embedded
default dataset, so the default study runs anywhere, offline.

`digits_rgb32` is the same data shaped like CIFAR-10 (3 x 32 x 32: each pixel repeated 4 x 4 and
the gray copied to 3 channels, so mean and std are unchanged): the GPU smoke study runs the real
CIFAR pipeline (WRN-28-2, B = 64, mu = 7, 32 px augmentation) on a machine with no internet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .registry import DatasetError, DatasetSpec, ImageData, register_dataset

FILE_NAME = "digits.npz"


def download(root: Path, *, test_size: int, partition_seed: int) -> list[Path]:
    """Write the images (scaled from 0..16 to 0..255) and a seeded train/test partition."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    if not 0 < test_size < len(labels):
        raise DatasetError(f"digits: test_size must be in 1..{len(labels) - 1}, got {test_size}")
    order = np.random.default_rng(partition_seed).permutation(len(labels))
    test_index, train_index = np.sort(order[:test_size]), np.sort(order[test_size:])
    root.mkdir(parents=True, exist_ok=True)
    path = root / FILE_NAME
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, train_images=images[train_index], train_labels=labels[train_index],
             test_images=images[test_index], test_labels=labels[test_index])
    tmp.replace(path)
    return [path]


def load(root: Path, **options) -> ImageData:
    path = root / FILE_NAME
    if not path.exists():
        raise DatasetError(f"digits: {path} is missing; run the `download` rule "
                           f"(snakemake {root}/manifest.json) to create it")
    with np.load(path) as arrays:
        return ImageData(
            train_images=torch.from_numpy(arrays["train_images"]),
            train_labels=torch.from_numpy(arrays["train_labels"]),
            test_images=torch.from_numpy(arrays["test_images"]),
            test_labels=torch.from_numpy(arrays["test_labels"]),
            class_names=[str(d) for d in range(10)],
        )


def load_rgb32(root: Path, **options) -> ImageData:
    data = load(root, **options)
    upscale = lambda images: (images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # noqa: E731
                              .expand(-1, 3, -1, -1).contiguous())
    return ImageData(train_images=upscale(data.train_images), train_labels=data.train_labels,
                     test_images=upscale(data.test_images), test_labels=data.test_labels,
                     class_names=data.class_names)


register_dataset(DatasetSpec(name="digits", download=download, load=load))
register_dataset(DatasetSpec(name="digits_rgb32", download=download, load=load_rgb32))
