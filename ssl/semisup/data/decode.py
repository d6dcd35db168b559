"""Decode an image file (JPEG, PNG, ...) to a uint8 (H, W, 3) RGB array at a given square size,
as torchvision's transforms.Resize does it on a PIL image (PIL's bilinear filter, which
antialiases when it shrinks): what USB's transforms feed its networks, computed once at load."""
from __future__ import annotations

import io

import numpy as np

from .registry import DatasetError


def decode_rgb(data: bytes, image_size: int, dataset: str, source: str) -> np.ndarray:
    """`data` (the file's bytes, named `source` in errors) as image_size x image_size RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return square_rgb(image, image_size)
    except (OSError, ValueError, SyntaxError) as error:   # PIL's errors for unreadable files
        raise DatasetError(f"{dataset}: {source} is not an image PIL can read ({error}); it is "
                           f"not the released file: delete it and rerun the `download` rule") from error


def square_rgb(image, image_size: int) -> np.ndarray:
    """A PIL image converted to RGB and resized (squashed, as USB's Resize((s, s))) to
    image_size x image_size; left as it is when it has that size already."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
