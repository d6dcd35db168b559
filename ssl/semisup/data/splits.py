"""Labeled splits: n_labels / C indices per class drawn with a seeded generator, stored with their
sha256 so that every algorithm trains on exactly the same labeled images; or, where the dataset's
release fixes its labeled set (Semi-Aves), that set whole."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from ..errors import SplitError


def labeled_indices(labels: np.ndarray, n_labels: int, num_classes: int, seed: int) -> list[int]:
    """Draw n_labels / num_classes indices of each class, without replacement, sorted."""
    if n_labels <= 0 or n_labels % num_classes:
        raise SplitError(f"n_labels={n_labels} must be a positive multiple of the number of "
                         f"classes ({num_classes}) so that every class gets the same count")
    per_class = n_labels // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise SplitError(f"n_labels={n_labels} asks for {per_class} images of class {cls}, "
                             f"but the training set has only {len(members)}; use a smaller n_labels")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return sorted(int(i) for i in np.concatenate(chosen))


def indices_sha256(indices: list[int]) -> str:
    return hashlib.sha256(json.dumps(indices).encode()).hexdigest()


def make_split(labels: np.ndarray, n_labels: int, num_classes: int, seed: int,
               dataset: str) -> dict:
    indices = labeled_indices(labels, n_labels, num_classes, seed)
    return {"dataset": dataset, "n_labels": n_labels, "seed": seed,
            "labeled_indices": indices, "split_sha256": indices_sha256(indices)}


def release_split(num_labeled: int, n_labels: int, seed: int, dataset: str,
                  labeled_by: str) -> dict:
    """The split of a dataset whose labeled set its release fixes (Semi-Aves): every image of
    its training set is labeled, whatever the seed (the seeds still differ in training); the
    unlabeled set is the release's own. `labeled_by` names the option that chose the labeled set."""
    if n_labels != num_labeled:
        raise SplitError(f"n_labels={n_labels}, but the labeled set of {dataset} is fixed by its "
                         f"release: {labeled_by} has {num_labeled} labeled images; set "
                         f"study.n_labels to [{num_labeled}] (or choose another labeled list)")
    indices = list(range(num_labeled))
    return {"dataset": dataset, "n_labels": n_labels, "seed": seed, "labeled_set": "release",
            "labeled_indices": indices, "split_sha256": indices_sha256(indices)}


def verify_split(split: dict, source: str = "split", num_train: int | None = None) -> list[int]:
    """Return the labeled indices after checking them against the stored split_sha256 and that
    they are distinct integers of the training set (0 .. num_train - 1): a duplicate would
    train on fewer labels than the split claims, and -1 would label the last image."""
    try:
        indices, stored = split["labeled_indices"], split["split_sha256"]
    except (KeyError, TypeError) as missing:
        raise SplitError(f"{source} lacks the key {missing}; delete it and rerun to recreate it")
    fix = "Delete it and rerun snakemake to recreate it, or restore it with `dvc checkout`"
    if indices_sha256(indices) != stored:
        raise SplitError(f"{source}: the labeled indices do not match their sha256 (was the file "
                         f"edited by hand?). {fix}")
    if not isinstance(indices, list) or not indices:
        raise SplitError(f"{source}: labeled_indices must be a non-empty list. {fix}")
    bad = [i for i in indices if not isinstance(i, int) or isinstance(i, bool) or i < 0
           or (num_train is not None and i >= num_train)]
    if bad:
        size = f" 0..{num_train - 1}" if num_train is not None else ""
        raise SplitError(f"{source}: labeled_indices holds {bad[:5]}, not indices of the "
                         f"training set{size}. {fix}")
    if len(set(indices)) != len(indices):
        raise SplitError(f"{source}: labeled_indices repeats an index, so it labels fewer images "
                         f"than it claims. {fix}")
    return indices
