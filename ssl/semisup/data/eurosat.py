"""EuroSAT (RGB): 27,000 Sentinel-2 satellite images of 10 land-use classes, 64x64 JPEGs, one
folder per class in EuroSAT.zip (2750/<class>/<class>_<n>.jpg) as torchvision.datasets.EuroSAT
downloads it (from torchgeo's Hugging Face copy of phelber/EuroSAT; MIT licence). Read
straight from the verified zip, resized to image_size (USB: 32).

The train/test partition is USB's (semilearn 0.3.2, datasets/cv_datasets/eurosat.py, VTAB's
rule): the images of each class in torchvision ImageFolder's order (class folders sorted by
name, file names sorted as strings), the first int((0.6 + 0.2) * n) of each class for training
(21,600 images: VTAB's train and validation parts) and the rest for testing (5,400)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .decode import decode_rgb
from .public import OfficialFile, existing, fetch, unreadable
from .registry import DatasetSpec, ImageData, as_uint8_nchw, register_dataset

# URL and md5 as torchvision.datasets.EuroSAT (0.2x) downloads it.
EUROSAT_ZIP = OfficialFile(
    "EuroSAT.zip", "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip", "c8fa014336c82ac7804f0398fcb19387")
IMAGE_FOLDER = "2750"
TRAIN_PERCENT, VALIDATION_PERCENT = 0.60, 0.20   # USB's class-wise rule; its sum is not 0.8 exactly


def download_eurosat(root: Path, *, mirror: str | None, md5: dict, image_size: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [fetch("eurosat", EUROSAT_ZIP, root, [EUROSAT_ZIP], mirror, md5)[0]]


def class_files(archive: zipfile.ZipFile, path: Path) -> dict[str, list[str]]:
    """Class name -> its images' member names, both in torchvision ImageFolder's order."""
    classes: dict[str, list[str]] = {}
    for member in archive.namelist():
        parts = member.split("/")
        if len(parts) == 3 and parts[0] == IMAGE_FOLDER and parts[2].lower().endswith(".jpg"):
            classes.setdefault(parts[1], []).append(parts[2])
    if len(classes) != 10:
        raise unreadable("eurosat", path, ValueError(
            f"{len(classes)} class folders under {IMAGE_FOLDER}/, EuroSAT has 10"))
    return {name: [f"{IMAGE_FOLDER}/{name}/{file}" for file in sorted(classes[name])]
            for name in sorted(classes)}


def train_count(num_images: int) -> int:
    """How many of a class's images are training images (USB: int((0.6 + 0.2) * n))."""
    return int((TRAIN_PERCENT + VALIDATION_PERCENT) * num_images)


def load_eurosat(root: Path, *, image_size: int, **options) -> ImageData:
    path = existing("eurosat", root / EUROSAT_ZIP.name)
    splits = {"train": ([], []), "test": ([], [])}
    try:
        with zipfile.ZipFile(path) as archive:
            classes = class_files(archive, path)
            for label, members in enumerate(classes.values()):
                for position, member in enumerate(members):
                    images, labels = splits["train" if position < train_count(len(members)) else "test"]
                    images.append(decode_rgb(archive.read(member), image_size, "eurosat",
                                             f"{path}:{member}"))
                    labels.append(label)
    except zipfile.BadZipFile as error:
        raise unreadable("eurosat", path, error) from error
    tensors = [(as_uint8_nchw(np.stack(images), channels_last=True),
                torch.tensor(labels, dtype=torch.int64)) for images, labels in splits.values()]
    return ImageData(*tensors[0], *tensors[1], class_names=list(classes))


register_dataset(DatasetSpec(name="eurosat", download=download_eurosat, load=load_eurosat))
