"""USB's NLP datasets in its release format (semilearn 0.3.2, datasets/nlp_datasets/json_data.py):
a folder per dataset with train.json, dev.json and test.json, each a JSON object of samples
keyed "0", "1", ... in order: {"ori": text, "aug_0": its back-translation via German, "aug_1":
via Russian, "label": class} in train.json, {"ori", "label"} in dev.json and test.json. The
labeled and unlabeled samples come from train.json; dev.json is the validation set (USB's
`eval` split, its checkpoint selection), test.json the test set.

USB publishes the files as one archive, usbdata.tar.gz, behind a OneDrive share link
(preprocess/README.md in microsoft/Semi-supervised-learning), with no checksums and no direct
download URL; its nlp part holds ag_news, amazon_review, yahoo_answers and yelp_review. IMDB
(aclImdb) is not in it: USB's preprocess/preprocess_aclimdb.py makes it from Stanford's release
with fairseq's WMT19 translation models. So `download` takes the files from `mirror` (a folder
or a file:// or http(s):// URL holding the three files) or finds them placed by hand in
data/raw/<dataset>/<data key>/; otherwise it stops naming them and where they come from. `md5`
({file name: md5}) pins them where you know their checksums; the manifest records their sha256
either way.
"""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import torch

from .public import rerun_hint
from .registry import DatasetError, DatasetSpec, register_dataset
from .text import TextData

USB_DATA = "https://1drv.ms/u/c/af426f3217f6565a/ERsn-5wCWE1Bj-Rz4UyJEwABW4K10laA4cKG1xyqJmzpmg"
FILES = ("train.json", "dev.json", "test.json")
STARS = [f"{n} star{'s' if n > 1 else ''}" for n in range(1, 6)]
# dataset -> (its folder in USB's release, class names in label order)
RELEASES = {
    "imdb": ("aclImdb", ["pos", "neg"]),   # preprocess_aclimdb.py: {'pos': 0, 'neg': 1}
    "ag_news": ("ag_news", ["World", "Sports", "Business", "Sci/Tech"]),
    "amazon_review": ("amazon_review", STARS),
    "yahoo_answers": ("yahoo_answers", [
        "Society & Culture", "Science & Mathematics", "Health", "Education & Reference",
        "Computers & Internet", "Sports", "Business & Finance", "Entertainment & Music",
        "Family & Relationships", "Politics & Government"]),
    "yelp_review": ("yelp_review", STARS),
}


def placement_help(dataset: str, root: Path) -> str:
    folder = RELEASES[dataset][0]
    if dataset == "imdb":
        source = ("USB's release does not include it: make it with USB's "
                  "preprocess/preprocess_aclimdb.py (microsoft/Semi-supervised-learning) from "
                  "https://ai.stanford.edu/~amaas/data/sentiment/")
    else:
        source = f"extract them from USB's usbdata.tar.gz ({USB_DATA}): its {folder}/ folder"
    return (f"Place {', '.join(FILES)} (USB's release format) in {root.resolve()}/ ({source}), "
            f"then {rerun_hint(root)}. Or set datasets.{dataset}.mirror to a folder or URL "
            f"holding them.")


def md5_of(path: Path) -> str:
    from torchvision.datasets.utils import calculate_md5

    return calculate_md5(path)


def copy_from(url: str, path: Path) -> None:
    from torchvision.datasets.utils import download_url

    if url.startswith("file:"):
        with urllib.request.urlopen(url) as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    else:
        download_url(url, path.parent, path.name)


def fetch_file(dataset: str, name: str, root: Path, mirror: str | None, md5: dict) -> Path:
    path = root / name
    if path.exists() and (name not in md5 or md5_of(path) == md5[name]):
        return path
    if mirror is None:
        raise DatasetError(f"{dataset}: {path} is missing and USB publishes no direct download "
                           f"URL for it.\n" + placement_help(dataset, root))
    base = mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()
    url = f"{base.rstrip('/')}/{name}"
    try:
        copy_from(url, path)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise DatasetError(f"{dataset}: could not download {name} from {url} ({error}).\n"
                           + placement_help(dataset, root)) from error
    if name in md5 and md5_of(path) != md5[name]:
        actual = md5_of(path)
        path.unlink()
        raise DatasetError(f"{dataset}: {name} from {url} has md5 {actual}, expected {md5[name]} "
                           f"(datasets.{dataset}.md5); it was deleted")
    return path


def download_text(dataset: str, root: Path, mirror: str | None, md5: dict) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [fetch_file(dataset, name, root, mirror, md5) for name in FILES]


def read_samples(dataset: str, path: Path, keys: tuple[str, ...]) -> tuple[list, torch.Tensor]:
    """The samples of one release file in its order: the texts under `keys`, the labels."""
    if not path.exists():
        raise DatasetError(f"{dataset}: {path} is missing; run the `download` rule first")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
        texts = [tuple(str(sample[key]) for key in keys) for sample in samples.values()]
        labels = torch.tensor([int(sample["label"]) for sample in samples.values()])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{dataset}: cannot read {path} ({type(error).__name__}: {error}); it "
                           f"is not in USB's release format (an object of samples with "
                           f"{', '.join(keys)} and label): delete it and rerun the `download` "
                           f"rule") from error
    num_classes = len(RELEASES[dataset][1])
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetError(f"{dataset}: {path} has no samples or labels outside 0..{num_classes - 1}")
    return texts, labels


def load_text(dataset: str, root: Path) -> TextData:
    train, train_labels = read_samples(dataset, root / "train.json", ("ori", "aug_0", "aug_1"))
    dev, dev_labels = read_samples(dataset, root / "dev.json", ("ori",))
    test, test_labels = read_samples(dataset, root / "test.json", ("ori",))
    return TextData(train, train_labels, [text for (text,) in dev], dev_labels,
                    [text for (text,) in test], test_labels, list(RELEASES[dataset][1]))


def register(dataset: str) -> None:
    def download(root: Path, *, mirror: str | None, md5: dict) -> list[Path]:
        return download_text(dataset, root, mirror, md5)

    def load(root: Path, **options) -> TextData:
        return load_text(dataset, root)

    register_dataset(DatasetSpec(name=dataset, download=download, load=load))


for name in ("imdb", "ag_news", "amazon_review", "yahoo_answers", "yelp_review"):
    register(name)
