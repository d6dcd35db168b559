"""Facts about each registered dataset that the workflow needs before torch is imported (a
config is checked in a fraction of a second): its classes, channels, normalisation statistics
and whether weak augmentation flips it. Free of torch; `semisup.data` registers the download and
load functions under the same names. The datasets' options (and their defaults) are not facts:
they are parameters, in params.yaml."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetFacts:
    num_classes: int | None        # None: known once the data is read (image_folder)
    channels: int
    mean: tuple[float, ...]        # per channel, images scaled to [0, 1]
    std: tuple[float, ...]
    horizontal_flip: bool          # weak augmentation flips (not digits: not symmetric)


DIGITS_MEAN, DIGITS_STD = (0.3050,), (0.3760,)   # over all 1,797 images
DATASETS: dict[str, DatasetFacts] = {
    "digits": DatasetFacts(10, 1, DIGITS_MEAN, DIGITS_STD, horizontal_flip=False),
    "digits_rgb32": DatasetFacts(10, 3, DIGITS_MEAN * 3, DIGITS_STD * 3, horizontal_flip=False),
    # FixMatch-pytorch's and TorchSSL's statistics (USB's code uses ImageNet's for CIFAR-10).
    "cifar10": DatasetFacts(10, 3, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True),
    "cifar100": DatasetFacts(100, 3, tuple(x / 255 for x in (129.3, 124.1, 112.4)),  # TorchSSL/USB
                             tuple(x / 255 for x in (68.2, 65.4, 70.4)), True),
    # The FixMatch paper does not flip SVHN (digits are not symmetric).
    "svhn": DatasetFacts(10, 3, (0.4380, 0.4440, 0.4730), (0.1751, 0.1771, 0.1744), False),
    "stl10": DatasetFacts(10, 3, tuple(x / 255 for x in (112.4, 109.1, 98.6)),  # TorchSSL/USB
                          tuple(x / 255 for x in (68.4, 66.6, 68.5)), True),
    # ImageNet's statistics, for natural images; the classes are the folder's sub-folders.
    "image_folder": DatasetFacts(None, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True),
}
