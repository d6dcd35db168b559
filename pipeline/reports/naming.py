"""How the reports name a study's data in captions and figure titles: the dataset's name, or, for
a study on the user's own images (image_folder), the study's name, which the user chose for them."""
from __future__ import annotations


def data_name(dataset: str, study: str) -> str:
    return study if dataset == "image_folder" else dataset
