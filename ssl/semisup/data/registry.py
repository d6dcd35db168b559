"""Dataset registry. A dataset downloads its original files into a folder and loads them as
uint8 image tensors (N, C, H, W) with integer labels and a fixed train/test partition."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import DatasetError


@dataclass
class ImageData:
    train_images: Tensor          # uint8 (N, C, H, W): labeled candidates, also unlabeled
    train_labels: Tensor          # int64 (N,)
    test_images: Tensor           # uint8 (M, C, H, W)
    test_labels: Tensor           # int64 (M,)
    class_names: list[str]
    # Images that are only ever unlabeled (STL-10's unlabeled split, SVHN's extra when used as
    # unlabeled data). Their labels, when known, are -1 where unknown.
    extra_unlabeled_images: Tensor | None = None
    extra_unlabeled_labels: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]                # (C, H, W)
    mean: tuple[float, ...]                          # per channel, images scaled to [0, 1]
    std: tuple[float, ...]
    download: Callable[..., list[Path]]              # (root, **options) -> files written
    load: Callable[..., ImageData]                   # (root, **options) -> ImageData
    horizontal_flip: bool = True                     # weak augmentation flips (not for digits/SVHN)
    options: dict = field(default_factory=dict)      # documented defaults of **options


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def as_uint8_nchw(array, channels_last: bool) -> Tensor:
    tensor = torch.as_tensor(array)
    if channels_last:
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor.contiguous().to(torch.uint8)
