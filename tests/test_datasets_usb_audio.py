"""USB's audio datasets (semisup.data.usb_audio): small pickles in USB's format written here,
served from a file:// mirror through the real download path; the offline message; a pickle that
would run code refused; FSDnoisy18k's labeled and unlabeled sets as its release fixes them."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from semisup.data import get_dataset
from semisup.data.registry import DatasetError
from semisup.data.splits import release_split

CLASSES = {"esc50": 50, "gtzan": 10, "urbansound8k": 10, "superbks": 10, "fsdnoisy": 20}


def clip_bytes(clip: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, clip)
    return buffer.getvalue()


def usb_pickle(lengths: list[int], labels: list[int], seed: int) -> bytes:
    """{index: {"wav": np.save bytes, "label": label}}, as USB's preprocess scripts write."""
    rng = np.random.default_rng(seed)
    return pickle.dumps({index: {"wav": clip_bytes(rng.uniform(-0.5, 0.5, n).astype(np.float32)),
                                 "label": np.int64(label)}
                         for index, (n, label) in enumerate(zip(lengths, labels, strict=True))})


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """USB's data/<dataset>/ folders for two datasets: the mirror the tests download from."""
    root = tmp_path_factory.mktemp("usbdata")
    for dataset in ("esc50", "fsdnoisy"):
        folder = root / dataset
        folder.mkdir()
        classes = CLASSES[dataset]
        (folder / "train.pkl").write_bytes(usb_pickle([800, 1200] * classes,
                                                      [c for c in range(classes) for _ in (0, 1)], 0))
        (folder / "dev.pkl").write_bytes(usb_pickle([500, 700], [0, 1], 1))
        (folder / "test.pkl").write_bytes(usb_pickle([900, 400, 1000], [2, 1, 0], 2))
        if dataset == "fsdnoisy":
            (folder / "ulb_train.pkl").write_bytes(usb_pickle([300] * 5, [3] * 5, 3))
    return root


def options(dataset: str, **changes) -> dict:
    base = {"mirror": None, "md5": {}, "test_set": "test"}
    if dataset == "fsdnoisy":
        base["labeled_file"] = "train.pkl"
    return {**base, **changes}


def test_esc50_downloads_from_a_mirror_and_loads_16khz_clips(tmp_path, release):
    spec = get_dataset("esc50")
    mirror = (release / "esc50").as_uri()
    files = spec.download(tmp_path / "raw", **options("esc50", mirror=mirror))
    assert sorted(path.name for path in files) == ["test.pkl", "train.pkl"]
    data = spec.load(tmp_path / "raw", **options("esc50"))
    assert data.num_classes == 50 and data.sample_rate == 16000
    assert data.train_lengths[:2].tolist() == [800, 1200] and len(data.train_samples) == 100000
    assert data.test_labels.tolist() == [2, 1, 0] and data.test_samples.dtype == torch.float32
    assert data.unlabeled_includes_train and data.extra_unlabeled_samples is None


def test_the_dev_set_is_evaluated_when_asked(tmp_path, release):
    spec = get_dataset("esc50")
    spec.download(tmp_path, **options("esc50", mirror=str(release / "esc50"), test_set="dev"))
    assert spec.load(tmp_path, **options("esc50", test_set="dev")).test_labels.tolist() == [0, 1]


def test_without_a_mirror_the_missing_files_and_their_source_are_named(tmp_path):
    with pytest.raises(DatasetError) as error:
        get_dataset("urbansound8k").download(tmp_path / "raw", **options("urbansound8k"))
    message = str(error.value)
    assert "train.pkl, test.pkl missing" in message and "preprocess_urbansound.py" in message
    assert str((tmp_path / "raw").resolve()) in message and "datasets.urbansound8k.mirror" in message
    with pytest.raises(DatasetError, match=r"usbdata\.tar\.gz"):
        get_dataset("gtzan").download(tmp_path / "gtzan", **options("gtzan"))


def test_a_file_with_another_md5_is_deleted_and_named(tmp_path, release):
    with pytest.raises(DatasetError, match=r"train\.pkl downloaded from .* has md5"):
        get_dataset("esc50").download(tmp_path, **options(
            "esc50", mirror=str(release / "esc50"), md5={"train.pkl": "0" * 32}))
    assert not (tmp_path / "train.pkl").exists()


class Hostile:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "train.pkl").write_bytes(pickle.dumps({0: {"wav": Hostile(), "label": 0}}))
    (tmp_path / "test.pkl").write_bytes(usb_pickle([10], [0], 0))
    with pytest.raises(DatasetError, match=r"builtins\.print, which a USB audio file does not hold"):
        get_dataset("gtzan").load(tmp_path, **options("gtzan"))


def test_a_label_outside_the_classes_is_named(tmp_path):
    (tmp_path / "train.pkl").write_bytes(usb_pickle([10], [10], 0))
    (tmp_path / "test.pkl").write_bytes(usb_pickle([10], [0], 0))
    with pytest.raises(DatasetError, match=r"label 10 is not a class 0\.\.9"):
        get_dataset("superbks").load(tmp_path, **options("superbks"))


def test_fsdnoisy_trains_on_its_release_labeled_set_with_its_own_unlabeled_clips(tmp_path, release):
    spec = get_dataset("fsdnoisy")
    spec.download(tmp_path, **options("fsdnoisy", mirror=str(release / "fsdnoisy")))
    data = spec.load(tmp_path, **options("fsdnoisy"))
    assert len(data.train_labels) == 40 and data.extra_unlabeled_lengths.tolist() == [300] * 5
    assert not data.unlabeled_includes_train
    split = release_split(len(data.train_labels), 40, 0, "fsdnoisy", "labeled_file")
    assert split["labeled_indices"] == list(range(40))
    from semisup.data.audio import AudioAugment, audio_train_data

    train = audio_train_data(data, torch.tensor(split["labeled_indices"]),
                             AudioAugment(max_length_seconds=0.05), torch.device("cpu"))
    assert train.modality.size("unlabeled") == 5 and train.unlabeled_labels.tolist() == [3] * 5
    weak, strong = train.modality.views("unlabeled", torch.tensor([0, 4]), ("weak", "strong"),
                                        torch.Generator().manual_seed(0))
    assert weak.waveform.shape == strong.waveform.shape == (2, 800)
