"""Datasets (registered by name), labeled splits and batched augmentation."""
from .registry import DATASETS, DatasetError, DatasetSpec, ImageData, get_dataset, register_dataset
from . import digits  # noqa: F401  (registers)
from . import public  # noqa: F401  (registers)
from . import image_folder  # noqa: F401  (registers)
from . import eurosat, semi_aves, tissuemnist  # noqa: F401  (register USB's CV datasets)
from . import audio_folder, usb_audio  # noqa: F401  (register the audio datasets)
from . import usb_text  # noqa: F401  (registers USB's NLP datasets)

__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "ImageData", "get_dataset", "register_dataset"]
