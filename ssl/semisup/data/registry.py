"""Dataset registry. A dataset downloads its original files into a folder and loads them as
uint8 image tensors (N, C, H, W) with integer labels and a fixed train/test partition."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..catalog import DATASETS as CATALOG, DatasetFacts, ImageInputs
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
    # False where the release gives the unlabeled set apart from the labeled one (Semi-Aves):
    # the unlabeled data is then the extra images only, as USB trains on it.
    unlabeled_includes_train: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DatasetSpec:
    """A registered dataset: its download and load functions (each takes the folder and every
    one of the dataset's options, as params.yaml lists them) and its facts (semisup.catalog)."""

    name: str
    download: Callable[..., list[Path]]              # (root, **options) -> files written
    load: Callable[..., ImageData]                   # (root, **options) -> ImageData

    @property
    def facts(self) -> DatasetFacts:
        return CATALOG[self.name]

    @property
    def num_classes(self) -> int | None:
        return self.facts.num_classes

    @property
    def inputs(self) -> ImageInputs:
        return self.facts.inputs


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name not in CATALOG:
        raise ValueError(f"dataset {spec.name!r} has no entry in semisup.catalog.DATASETS")
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
