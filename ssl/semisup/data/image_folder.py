"""`image_folder`: a user's folder with one sub-folder of images per class
(<path>/<class name>/<image>), any size, resized to image_size x image_size RGB, with a seeded
per-class train/test partition."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from .public import existing
from .registry import DatasetError, DatasetSpec, ImageData, as_uint8_nchw, register_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
INDEX_NAME = "image_folder_index.json"
FOLDER_HELP = ("set datasets.image_folder.path to a folder with one sub-folder of images per "
               "class, e.g. <path>/cat/001.png and <path>/dog/001.jpg")


def class_folders(path: str | None) -> dict[str, list[str]]:
    """Class name -> sorted image file names, for every sub-folder that holds images."""
    if path is None:
        raise DatasetError(f"image_folder: no path given; {FOLDER_HELP}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"image_folder: {folder} is not a folder; {FOLDER_HELP}")
    classes = {sub.name: sorted(f.name for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
               for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")}
    empty = [name for name, files in classes.items() if not files]
    if empty:   # a class without images would silently vanish from the label set
        raise DatasetError(f"image_folder: the class folder(s) {', '.join(empty)} in {folder} "
                           f"hold no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add images "
                           f"or move the folder(s) out of {folder}")
    if len(classes) < 2:
        raise DatasetError(f"image_folder: {folder} has {len(classes)} class sub-folder(s) with "
                           f"images ({', '.join(sorted(IMAGE_SUFFIXES))}), at least 2 are needed; "
                           f"{FOLDER_HELP}")
    return classes


def download_image_folder(root: Path, *, path: str | None, test_fraction: float,
                          partition_seed: int, image_size: int) -> list[Path]:
    """Nothing to fetch: list the class folders and record every image's sha256 in an index, so
    that the dataset digest changes when the images do."""
    folder = Path(path).expanduser().resolve() if path is not None else None
    classes = class_folders(path)
    index = {"path": str(folder), "classes": {
        name: {file: hashlib.sha256((folder / name / file).read_bytes()).hexdigest() for file in files}
        for name, files in classes.items()}}
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / INDEX_NAME
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    return [index_path]


def read_image(path: Path, sha256: str, image_size: int) -> np.ndarray:
    from PIL import Image

    if not path.exists():
        raise DatasetError(f"image_folder: {path} is gone since the download rule listed it; "
                           f"rerun the download (delete {INDEX_NAME} and manifest.json)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetError(f"image_folder: {path} changed since the download rule listed it; "
                           f"rerun the download (delete {INDEX_NAME} and manifest.json)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):   # 16-bit gray: scale, not clip
                values = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
                image = Image.fromarray(np.round(values).clip(0, 255).astype(np.uint8), "L")
            resized = image.convert("RGB").resize((image_size, image_size),
                                                  Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as error:   # PIL's errors for unreadable files
        raise DatasetError(f"image_folder: {path} is not an image PIL can read ({error}); "
                           f"replace or remove it and rerun the download") from error
    return np.asarray(resized, dtype=np.uint8)


def partition(num_images: int, test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices (within one class) of its test images: round(test_fraction * n) of them."""
    return set(rng.permutation(num_images)[: int(round(test_fraction * num_images))].tolist())


def load_image_folder(root: Path, *, path: str | None, test_fraction: float, partition_seed: int,
                      image_size: int) -> ImageData:
    if not 0 < test_fraction < 1:
        raise DatasetError(f"image_folder: test_fraction must be in (0, 1), got {test_fraction}")
    index = json.loads(existing("image_folder", root / INDEX_NAME).read_text())
    folder, rng = Path(index["path"]), np.random.default_rng(partition_seed)
    if path is not None and Path(path).expanduser().resolve() != folder:
        raise DatasetError(f"image_folder: {root / INDEX_NAME} lists {folder}, not {path}; rerun "
                           f"the download rule")
    splits = {"train": ([], []), "test": ([], [])}
    for label, (name, files) in enumerate(index["classes"].items()):
        test_indices = partition(len(files), test_fraction, rng)
        for position, (file, sha256) in enumerate(files.items()):
            images, labels = splits["test" if position in test_indices else "train"]
            images.append(read_image(folder / name / file, sha256, image_size))
            labels.append(label)
    if not splits["test"][0] or not splits["train"][0]:
        raise DatasetError(f"image_folder: test_fraction {test_fraction} leaves an empty train or "
                           f"test set for {folder}; choose a fraction that keeps images in both")
    tensors = [(as_uint8_nchw(np.stack(images), channels_last=True), torch.tensor(labels))
               for images, labels in splits.values()]
    return ImageData(*tensors[0], *tensors[1], class_names=list(index["classes"]))


register_dataset(DatasetSpec(name="image_folder", download=download_image_folder,
                             load=load_image_folder))
