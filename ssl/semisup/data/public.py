"""The public benchmarks of the classic protocol, read from their original files: CIFAR-10 and
CIFAR-100 (python pickles), SVHN (MATLAB .mat), STL-10 (raw binaries). (A user's own folder of
images is semisup.data.image_folder.)

`download` fetches the official files with torchvision's downloader into data/raw/<dataset>/ and
verifies their md5; a file already there with the right md5 is not fetched again. Options of the
four benchmarks:
- mirror: a directory or URL (file://, http(s)://) holding the official file names, used instead
  of the official URLs (a local mirror; the tests serve small archives this way);
- md5: {file name: md5} replacing the official checksums (for files that are not the official ones).
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .registry import DatasetError, DatasetSpec, ImageData, as_uint8_nchw, register_dataset


@dataclass(frozen=True)
class OfficialFile:
    name: str                                            # at the URL and in data/raw/<dataset>/
    url: str
    md5: str                                             # "": the source publishes none
    members: dict[str, str] = field(default_factory=dict)  # extracted path -> md5 (archives)


# URLs and checksums as torchvision.datasets.CIFAR10/CIFAR100/SVHN/STL10 use them.
CIFAR10_ARCHIVE = OfficialFile(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a", {
        "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
        "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
        "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
        "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888"})
CIFAR100_ARCHIVE = OfficialFile(
    "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85", {
        "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
        "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48"})
STL10_ARCHIVE = OfficialFile(
    "stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "91f7769df0f17e558f3565bffb0c7dfb", {
        "stl10_binary/train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
        "stl10_binary/train_y.bin": "5a34089d4802c674881badbb80307741",
        "stl10_binary/test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
        "stl10_binary/test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
        "stl10_binary/unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4"})
SVHN_FILES = {split: OfficialFile(f"{split}_32x32.mat",
                                  f"http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat", md5)
              for split, md5 in (("train", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                                 ("test", "eb5a983be6a315427106f1b164d9cef3"),
                                 ("extra", "a93ce644f1a588dc4d68dda5feec44a7"))}
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


# ---------------------------------------------------------------------------------------------
# Download: fetch, verify, extract; errors that say which files to put where.

def source_url(official: OfficialFile, mirror: str | None) -> str:
    if mirror is None:
        return official.url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{official.name}"


def rerun_hint(root: Path) -> str:
    return f"rerun snakemake (the download rule: `snakemake {root}/manifest.json`)"


def placement_help(dataset: str, files: list[OfficialFile], root: Path) -> str:
    listing = "\n".join(f"  {f.name}  ({f'md5 {f.md5}' if f.md5 else 'no published md5'})  "
                        f"from {f.url}" for f in files)
    folders = sorted({member.split("/")[0] + "/" for f in files for member in f.members})
    if folders:
        listing += (f"\n  (or instead the folder {', '.join(folders)} it extracts to, as "
                    f"torchvision leaves it)")
    return (f"Without internet access, download these files elsewhere and place them in "
            f"{root.resolve()}/:\n{listing}\nthen {rerun_hint(root)}: files already there with the "
            f"right md5 are not fetched again. Or set datasets.{dataset}.mirror to a folder or URL "
            f"holding them.")


def retrieve(url: str, path: Path, expected_md5: str) -> None:
    """torchvision's downloader for http(s); a plain copy for file:// URLs (which it cannot read).
    Raises OSError when the source is unreachable, RuntimeError when the md5 differs."""
    from torchvision.datasets.utils import check_integrity, download_url

    if not url.startswith("file:"):
        download_url(url, path.parent, path.name, expected_md5)
        return
    with urllib.request.urlopen(url) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    if not check_integrity(path, expected_md5):
        raise RuntimeError("File not found or corrupted.")


def fetch(dataset: str, official: OfficialFile, root: Path, needed: list[OfficialFile],
          mirror: str | None, md5: dict) -> tuple[Path, bool]:
    """Download one official file into root unless a copy with the expected md5 is there;
    returns its path and whether it was downloaded now."""
    from torchvision.datasets.utils import calculate_md5, check_integrity

    expected = md5.get(official.name, official.md5) or None   # None: no published md5
    path = root / official.name
    if check_integrity(path, expected):
        return path, False
    url = source_url(official, mirror)
    try:
        retrieve(url, path, expected)
    except (OSError, RuntimeError) as error:  # torchvision raises RuntimeError on an md5 mismatch
        if isinstance(error, RuntimeError) and path.exists():
            actual = calculate_md5(path)
            path.unlink()
            raise DatasetError(
                f"{dataset}: {official.name} downloaded from {url} has md5 {actual}, expected "
                f"{expected} (a corrupt or incomplete download, or not the official file); it was "
                f"deleted. Place a correct copy in {root.resolve()}/ or {rerun_hint(root)} to "
                f"download it again") from error
        path.unlink(missing_ok=True)  # a partial download
        raise DatasetError(f"{dataset}: could not download {official.name} from {url} ({error}).\n"
                           + placement_help(dataset, needed, root)) from error
    return path, True


def members_verified(official: OfficialFile, root: Path, md5: dict) -> bool:
    """True when the archive's extracted files are all there with their md5 (as torchvision
    leaves them), so the archive itself is not needed."""
    from torchvision.datasets.utils import check_integrity

    return all(check_integrity(root / member, md5.get(member, expected))
               for member, expected in official.members.items())


def fetch_archive(dataset: str, official: OfficialFile, root: Path, mirror: str | None,
                  md5: dict) -> list[Path]:
    """Download and extract an archive; returns the extracted files that `load` reads."""
    from torchvision.datasets.utils import extract_archive

    root.mkdir(parents=True, exist_ok=True)
    members = [root / member for member in official.members]
    if not (root / official.name).exists() and members_verified(official, root, md5):
        return members
    archive, downloaded = fetch(dataset, official, root, [official], mirror, md5)
    if downloaded or not all(path.exists() for path in members):
        try:
            extract_archive(archive, root)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise DatasetError(f"{dataset}: cannot extract {archive} ({error}); delete it and "
                               f"{rerun_hint(root)}") from error
    missing = [str(path.relative_to(root)) for path in members if not path.exists()]
    if missing:
        raise DatasetError(f"{dataset}: {archive} does not contain {', '.join(missing)}; it is "
                           f"not the official {official.name}: delete it and {rerun_hint(root)}")
    return members


def download_cifar10(root: Path, *, mirror: str | None, md5: dict) -> list[Path]:
    return fetch_archive("cifar10", CIFAR10_ARCHIVE, root, mirror, md5)


def download_cifar100(root: Path, *, mirror: str | None, md5: dict) -> list[Path]:
    return fetch_archive("cifar100", CIFAR100_ARCHIVE, root, mirror, md5)


def download_stl10(root: Path, *, mirror: str | None, md5: dict) -> list[Path]:
    return fetch_archive("stl10", STL10_ARCHIVE, root, mirror, md5)


def svhn_files(extra: bool) -> list[OfficialFile]:
    return [SVHN_FILES[split] for split in (("train", "test", "extra") if extra else ("train", "test"))]


def download_svhn(root: Path, *, mirror: str | None, md5: dict, extra: bool) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    needed = svhn_files(extra)
    return [fetch("svhn", official, root, needed, mirror, md5)[0] for official in needed]


# ---------------------------------------------------------------------------------------------
# Load: parse the original formats into uint8 (N, C, H, W) tensors.

def existing(dataset: str, path: Path) -> Path:
    if not path.exists():
        raise DatasetError(f"{dataset}: {path} is missing; run the `download` rule first "
                           f"(snakemake data/raw/{dataset}/manifest.json)")
    return path


def unreadable(dataset: str, path: Path, error: Exception) -> DatasetError:
    return DatasetError(f"{dataset}: cannot read {path} ({type(error).__name__}: {error}); it is "
                        f"not in the original format: delete it and rerun the `download` rule")


def paired(dataset: str, path: Path, images: torch.Tensor, labels: torch.Tensor):
    if len(images) != len(labels):
        raise unreadable(dataset, path, ValueError(f"{len(images)} images but {len(labels)} labels"))
    return images, labels


def read_pickle(dataset: str, path: Path) -> dict:
    # The official CIFAR batches are Python 2 pickles (hence latin1); their md5 was verified.
    try:
        with open(existing(dataset, path), "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise unreadable(dataset, path, error) from error


def cifar_arrays(dataset: str, paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch holds `data` (N, 3072: the red, green, blue 32x32 planes, rows in order)."""
    batches = [read_pickle(dataset, path) for path in paths]
    try:
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        images = images.reshape(-1, 3, 32, 32)
    except (KeyError, ValueError) as error:
        raise unreadable(dataset, paths[0].parent, error) from error
    return paired(dataset, paths[0], as_uint8_nchw(images, channels_last=False), torch.from_numpy(labels))


def load_cifar10(root: Path, **options) -> ImageData:
    folder = root / "cifar-10-batches-py"
    train = cifar_arrays("cifar10", [folder / f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = cifar_arrays("cifar10", [folder / "test_batch"], "labels")
    class_names = read_pickle("cifar10", folder / "batches.meta")["label_names"]
    return ImageData(*train, *test, class_names=list(class_names))


def load_cifar100(root: Path, **options) -> ImageData:
    folder = root / "cifar-100-python"
    train = cifar_arrays("cifar100", [folder / "train"], "fine_labels")
    test = cifar_arrays("cifar100", [folder / "test"], "fine_labels")
    class_names = read_pickle("cifar100", folder / "meta")["fine_label_names"]
    return ImageData(*train, *test, class_names=list(class_names))


def read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """X is (32, 32, 3, N) in MATLAB order, y is (N, 1) with the digit 0 labelled 10."""
    from scipy.io import loadmat

    try:
        mat = loadmat(existing("svhn", path))
        images = np.transpose(mat["X"], (3, 2, 0, 1))
        labels = mat["y"].astype(np.int64).reshape(-1) % 10
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise unreadable("svhn", path, error) from error
    return paired("svhn", path, as_uint8_nchw(images, channels_last=False), torch.from_numpy(labels))


def load_svhn(root: Path, *, extra: bool, **options) -> ImageData:
    """With extra=True, the 531,131 extra images join the unlabeled data only (labels kept)."""
    train, test = read_svhn(root / "train_32x32.mat"), read_svhn(root / "test_32x32.mat")
    extra_images, extra_labels = read_svhn(root / "extra_32x32.mat") if extra else (None, None)
    return ImageData(*train, *test, class_names=[str(digit) for digit in range(10)],
                     extra_unlabeled_images=extra_images, extra_unlabeled_labels=extra_labels)


def read_stl10_images(path: Path) -> torch.Tensor:
    """Each image is 3 planes of 96x96 stored column by column (MATLAB order)."""
    raw = np.fromfile(existing("stl10", path), dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise unreadable("stl10", path, ValueError(f"{raw.size} bytes is not a whole number of images"))
    return as_uint8_nchw(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2), channels_last=False)


def read_stl10_labels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(existing("stl10", path), dtype=np.uint8).astype(np.int64) - 1)


def load_stl10(root: Path, **options) -> ImageData:
    """Labels 1..10 become 0..9; the 100,000 unlabeled images are extra unlabeled data (label -1)."""
    folder = root / "stl10_binary"
    unlabeled = read_stl10_images(folder / "unlabeled_X.bin")
    train = [read_stl10_images(folder / "train_X.bin"), read_stl10_labels(folder / "train_y.bin")]
    test = [read_stl10_images(folder / "test_X.bin"), read_stl10_labels(folder / "test_y.bin")]
    return ImageData(
        *paired("stl10", folder / "train_y.bin", *train), *paired("stl10", folder / "test_y.bin", *test),
        class_names=list(STL10_CLASSES), extra_unlabeled_images=unlabeled,
        extra_unlabeled_labels=torch.full((len(unlabeled),), -1, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------


register_dataset(DatasetSpec(name="cifar10", download=download_cifar10, load=load_cifar10))
register_dataset(DatasetSpec(name="cifar100", download=download_cifar100, load=load_cifar100))
register_dataset(DatasetSpec(name="svhn", download=download_svhn, load=load_svhn))
register_dataset(DatasetSpec(name="stl10", download=download_stl10, load=load_stl10))
