"""TissueMNIST (MedMNIST v2/v3): 236,386 gray 28x28 images of human kidney cortex cells in 8
classes, released as one tissuemnist.npz (train_images (165,466, 28, 28) uint8, train_labels
(165,466, 1), val_ and test_ the same; licence CC BY 4.0).

As USB uses it (semilearn 0.3.2, datasets/cv_datasets/medmnist.py): the train split holds the
labeled and unlabeled images, the test split (47,280) is the test set and the validation split
(23,640) is not used; each image is converted to RGB (gray copied to 3 channels, as_rgb=True) and
resized to image_size (USB: 32) with PIL's bilinear filter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .public import OfficialFile, existing, fetch, paired, unreadable
from .registry import DatasetSpec, ImageData, register_dataset

# The URL and md5 of the 28 px file in the medmnist package's INFO (medmnist 3.0.2: Zenodo record
# 10519652); semilearn 0.3.2 names record 5208230 (MedMNIST v2), whose file has the same md5.
TISSUEMNIST_NPZ = OfficialFile(
    "tissuemnist.npz", "https://zenodo.org/records/10519652/files/tissuemnist.npz?download=1",
    "ebe78ee8b05294063de985d821c1c34b")
CLASS_NAMES = ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
               "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
               "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"]


def download_tissuemnist(root: Path, *, mirror: str | None, md5: dict, image_size: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [fetch("tissuemnist", TISSUEMNIST_NPZ, root, [TISSUEMNIST_NPZ], mirror, md5)[0]]


def gray_to_rgb(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, H, W) gray -> (N, 3, image_size, image_size): each image resized as a PIL 'L' image
    (the same bytes as resizing its RGB copy: PIL filters each band alike), then copied to 3
    channels."""
    from PIL import Image

    if images.shape[1:] != (image_size, image_size):
        images = np.stack([np.asarray(Image.fromarray(image, "L").resize(
            (image_size, image_size), Image.Resampling.BILINEAR)) for image in images])
    return torch.from_numpy(np.ascontiguousarray(images))[:, None].expand(-1, 3, -1, -1).contiguous()


def read_split(path: Path, arrays, split: str, image_size: int):
    try:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    except KeyError as error:
        raise unreadable("tissuemnist", path, error) from error
    if images.dtype != np.uint8 or images.ndim != 3:
        raise unreadable("tissuemnist", path, ValueError(
            f"{split}_images is {images.dtype} {images.shape}, not uint8 (N, 28, 28) gray images"))
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))
    return paired("tissuemnist", path, gray_to_rgb(images, image_size), labels)


def load_tissuemnist(root: Path, *, image_size: int, **options) -> ImageData:
    path = existing("tissuemnist", root / TISSUEMNIST_NPZ.name)
    try:
        with np.load(path) as arrays:
            train = read_split(path, arrays, "train", image_size)
            test = read_split(path, arrays, "test", image_size)
    except (ValueError, OSError) as error:   # not an npz (zip) file
        raise unreadable("tissuemnist", path, error) from error
    return ImageData(*train, *test, class_names=list(CLASS_NAMES))


register_dataset(DatasetSpec(name="tissuemnist", download=download_tissuemnist,
                             load=load_tissuemnist))
