"""`audio_folder`: a user's folder with one sub-folder of WAV files per class
(<path>/<class name>/<clip>.wav), read as mono at sample_rate, with a seeded per-class train/test
partition (as image_folder). The smoke study trains on such a folder that the tests write."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .audio import AudioData, ragged
from .image_folder import partition
from .public import existing
from .registry import DatasetError, DatasetSpec, register_dataset
from .wav import read_wav

INDEX_NAME = "audio_folder_index.json"
FOLDER_HELP = ("set datasets.audio_folder.path to a folder with one sub-folder of WAV files per "
               "class, e.g. <path>/dog/001.wav and <path>/rain/001.wav")


def class_folders(path: str | None) -> dict[str, list[str]]:
    """Class name -> sorted WAV file names, for every sub-folder that holds them."""
    if path is None:
        raise DatasetError(f"audio_folder: no path given; {FOLDER_HELP}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"audio_folder: {folder} is not a folder; {FOLDER_HELP}")
    classes = {sub.name: sorted(f.name for f in sub.iterdir() if f.suffix.lower() == ".wav")
               for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")}
    empty = [name for name, files in classes.items() if not files]
    if empty or len(classes) < 2:
        raise DatasetError(f"audio_folder: {folder} has {len(classes)} class sub-folder(s)"
                           + (f", {', '.join(empty)} without .wav files" if empty else "")
                           + f"; at least 2 with WAV files are needed: {FOLDER_HELP}")
    return classes


def download_audio_folder(root: Path, *, path: str | None, test_fraction: float,
                          partition_seed: int, sample_rate: int) -> list[Path]:
    """Nothing to fetch: an index of every clip's sha256, so the dataset digest follows them."""
    classes = class_folders(path)
    folder = Path(path).expanduser().resolve()
    index = {"path": str(folder), "classes": {
        name: {file: hashlib.sha256((folder / name / file).read_bytes()).hexdigest() for file in files}
        for name, files in classes.items()}}
    root.mkdir(parents=True, exist_ok=True)
    (root / INDEX_NAME).write_text(json.dumps(index, indent=1, sort_keys=True))
    return [root / INDEX_NAME]


def read_clip(path: Path, sha256: str, sample_rate: int) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"audio_folder: {path} is gone since the download rule listed it; "
                           f"rerun the download (delete {INDEX_NAME} and manifest.json)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetError(f"audio_folder: {path} changed since the download rule listed it; "
                           f"rerun the download (delete {INDEX_NAME} and manifest.json)")
    return read_wav(data, sample_rate, "audio_folder", str(path))


def load_audio_folder(root: Path, *, path: str | None, test_fraction: float, partition_seed: int,
                      sample_rate: int) -> AudioData:
    if not 0 < test_fraction < 1:
        raise DatasetError(f"audio_folder: test_fraction must be in (0, 1), got {test_fraction}")
    index = json.loads(existing("audio_folder", root / INDEX_NAME).read_text())
    folder, rng = Path(index["path"]), np.random.default_rng(partition_seed)
    splits = {"train": ([], []), "test": ([], [])}
    for label, (name, files) in enumerate(index["classes"].items()):
        test_indices = partition(len(files), test_fraction, rng)
        for position, (file, sha256) in enumerate(files.items()):
            clips, labels = splits["test" if position in test_indices else "train"]
            clips.append(read_clip(folder / name / file, sha256, sample_rate))
            labels.append(label)
    if not splits["test"][0] or not splits["train"][0]:
        raise DatasetError(f"audio_folder: test_fraction {test_fraction} leaves an empty train or "
                           f"test set for {folder}; choose a fraction that keeps clips in both")
    (train, train_lengths), (test, test_lengths) = (ragged(clips) for clips, _ in splits.values())
    return AudioData(train, train_lengths, torch.tensor(splits["train"][1]), test, test_lengths,
                     torch.tensor(splits["test"][1]), class_names=list(index["classes"]),
                     sample_rate=sample_rate)


register_dataset(DatasetSpec(name="audio_folder", download=download_audio_folder,
                             load=load_audio_folder))
