"""USB's audio tasks, read from the files semilearn 0.3.2 reads (datasets/audio_datasets/
pkl_data.py): per dataset a folder with train.pkl, dev.pkl and test.pkl (FSDnoisy18k also
ulb_train.pkl), each a pickled dict {index: {"wav": np.save bytes of a 16 kHz mono float clip,
"label": int}}.

| dataset       | classes | USB budgets  | clips cut to | where the files come from                   |
| esc50         | 50      | 250, 500     | 5 s          | USB's data release (usbdata.tar.gz)         |
| fsdnoisy      | 20      | 1,773 (all)  | 5 s          | USB's data release; ulb_train.pkl unlabeled |
| gtzan         | 10      | 100, 400     | 3 s          | USB's data release                          |
| urbansound8k  | 10      | 100, 400     | 4 s          | the original, through USB's                 |
|               |         |              |              | preprocess/preprocess_urbansound.py         |
| superbks      | 10      | 50, 100      | 1 s          | SUPERB keyword spotting (Speech Commands),  |
|               |         |              |              | through USB's preprocess/preprocess_superb.py |

USB publishes no checksums and no direct URLs (the release is a OneDrive share of one archive
with every USB dataset): `download` copies the files from `mirror` (a folder or URL holding
train.pkl, dev.pkl, test.pkl: USB's data/<dataset>/), verifies them against `md5` where given
and the manifest records their sha256; without a mirror, files already in data/raw/<dataset>/
<key>/ are used, and missing ones are named with where to get them.

The pickles are read with an unpickler that builds only dicts, lists, numbers, strings and bytes
(and numpy scalars), and the clips with np.load(allow_pickle=False): a file cannot run code.
Options: test_set (test: test.pkl, USB's test loader; dev: dev.pkl, USB's `eval` set, which its
training logs and best checkpoint use), mirror, md5. FSDnoisy18k's labeled set is fixed by the
release (train.pkl, 1,773 clips; option labeled_file), its unlabeled set is ulb_train.pkl alone.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .audio import AudioData, ragged
from .public import OfficialFile, existing, fetch, unreadable
from .registry import DatasetError, DatasetSpec, register_dataset

RELEASE = ("USB's data release usbdata.tar.gz (github.com/microsoft/Semi-supervised-learning, "
           "preprocess/README.md: https://1drv.ms/u/c/af426f3217f6565a/"
           "ERsn-5wCWE1Bj-Rz4UyJEwABW4K10laA4cKG1xyqJmzpmg), its data/{dataset}/ folder")
PREPROCESSED = {
    "urbansound8k": ("the original UrbanSound8K (https://urbansounddataset.weebly.com/"
                     "urbansound8k.html) converted by USB's preprocess/preprocess_urbansound.py"),
    "superbks": ("SUPERB keyword spotting (Speech Commands v1.0) converted by USB's "
                 "preprocess/preprocess_superb.py")}
SAMPLE_RATE = 16000
NUM_CLASSES = {"esc50": 50, "fsdnoisy": 20, "gtzan": 10, "urbansound8k": 10, "superbks": 10}
TEST_SETS = ("test", "dev")
SAFE_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "dtype")}


def source(dataset: str) -> str:
    return PREPROCESSED.get(dataset, RELEASE.format(dataset=dataset))


def needed_files(dataset: str, test_set: str) -> list[OfficialFile]:
    if test_set not in TEST_SETS:
        raise DatasetError(f"{dataset}: datasets.{dataset}.test_set is {test_set!r}; allowed: "
                           f"{', '.join(TEST_SETS)}")
    names = ["train.pkl", f"{test_set}.pkl"] + (["ulb_train.pkl"] if dataset == "fsdnoisy" else [])
    return [OfficialFile(name, source(dataset), "") for name in names]


def download_usb_audio(dataset: str, root: Path, mirror: str | None, md5: dict,
                       test_set: str) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    needed = needed_files(dataset, test_set)
    missing = [f.name for f in needed if not (root / f.name).is_file()]
    if mirror is None and missing:
        raise DatasetError(
            f"{dataset}: {', '.join(missing)} missing in {root.resolve()}/. USB publishes them "
            f"without a direct URL: get them from {source(dataset)}, and place "
            f"{', '.join(f.name for f in needed)} in {root.resolve()}/ (or set "
            f"datasets.{dataset}.mirror to a folder or URL holding them), then rerun snakemake "
            f"(the download rule: `snakemake {root}/manifest.json`)")
    return [fetch(dataset, official, root, needed, mirror, md5)[0] for official in needed]


class ClipUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy scalars only: no other class, no code."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the file refers to {module}.{name}, which a USB audio "
                                     f"file does not hold")


def read_pkl(dataset: str, path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The clips (float32) and labels of one of USB's pickles, in the dict's order."""
    try:
        with open(existing(dataset, path), "rb") as handle:
            entries = ClipUnpickler(handle).load()
        clips = [np.load(io.BytesIO(entry["wav"]), allow_pickle=False).astype(np.float32).reshape(-1)
                 for entry in entries.values()]
        labels = [int(entry["label"]) for entry in entries.values()]
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError,
            OSError) as error:
        raise unreadable(dataset, path, error) from error
    if not clips:
        raise unreadable(dataset, path, ValueError("it holds no clips"))
    return clips, labels


def checked_labels(dataset: str, path: Path, labels: list[int]) -> torch.Tensor:
    bad = [label for label in labels if not 0 <= label < NUM_CLASSES[dataset]]
    if bad:
        raise unreadable(dataset, path, ValueError(
            f"label {bad[0]} is not a class 0..{NUM_CLASSES[dataset] - 1}"))
    return torch.tensor(labels, dtype=torch.int64)


def load_usb_audio(dataset: str, root: Path, test_set: str) -> AudioData:
    pools = {}
    for official in needed_files(dataset, test_set):
        clips, labels = read_pkl(dataset, root / official.name)
        labels = (torch.tensor(labels) if official.name == "ulb_train.pkl"   # statistics only
                  else checked_labels(dataset, root / official.name, labels))
        pools[official.name.removesuffix(".pkl")] = (*ragged(clips), labels)
    extra = pools.get("ulb_train", (None, None, None))
    return AudioData(*pools["train"], *pools[test_set],
                     class_names=[str(label) for label in range(NUM_CLASSES[dataset])],
                     sample_rate=SAMPLE_RATE, extra_unlabeled_samples=extra[0],
                     extra_unlabeled_lengths=extra[1], extra_unlabeled_labels=extra[2],
                     unlabeled_includes_train=dataset != "fsdnoisy")


def usb_audio_spec(dataset: str) -> DatasetSpec:
    def download(root: Path, *, mirror: str | None, md5: dict, test_set: str) -> list[Path]:
        return download_usb_audio(dataset, root, mirror, md5, test_set)

    def load(root: Path, *, mirror: str | None, md5: dict, test_set: str) -> AudioData:
        return load_usb_audio(dataset, root, test_set)

    return DatasetSpec(name=dataset, download=download, load=load)


def download_fsdnoisy(root: Path, *, mirror: str | None, md5: dict, test_set: str,
                      labeled_file: str) -> list[Path]:
    return download_usb_audio("fsdnoisy", root, mirror, md5, test_set)


def load_fsdnoisy(root: Path, *, mirror: str | None, md5: dict, test_set: str,
                  labeled_file: str) -> AudioData:
    return load_usb_audio("fsdnoisy", root, test_set)


for _name in ("esc50", "gtzan", "urbansound8k", "superbks"):
    register_dataset(usb_audio_spec(_name))
register_dataset(DatasetSpec(name="fsdnoisy", download=download_fsdnoisy, load=load_fsdnoisy))
