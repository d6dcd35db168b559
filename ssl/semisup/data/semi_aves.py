"""Semi-Aves: the Semi-Supervised iNaturalist-Aves challenge at FGVC7 (CVPR 2020; Su and Maji,
arXiv:2103.06937): 200 bird species, a labeled set fixed by the release (not drawn per seed), an
unlabeled set of its own (in-class and out-of-class images) and a test set, JPEGs of up to 500 px.

The release, and where each name here comes from:
- the lists, one `<image path> <label>` line per image: data/semi_aves/<list>.txt of
  github.com/cvl-umass/ssl-evaluation (its README, "Preparing Datasets and Splits"; pinned below
  at commit 472f904 with their md5s). semilearn 0.3.2 reads them from <data_dir>/semi_fgvc/
  semi_aves/<list>.txt and each image from <data_dir>/semi_fgvc/<image path>
  (datasets/cv_datasets/aves.py, make_dataset); this dataset's folder is laid out as that
  semi_fgvc/ (lists in semi_aves/), so a copy made for semilearn can be placed here as it is.
  Not used: val.txt (the 2,000 images l_train_val adds to l_train) and the *_oracle.txt lists
  (the unlabeled images' labels, released after the challenge).
- the image folders trainval_images/<class>/, u_train_in/, u_train_out/, test/: the first part
  of the lists' paths, as in the release's annotation files (annotation.tar.gz of
  github.com/cvl-umass/semi-inat-2020: anno_*.json's file_name, e.g. trainval_images/0/0.jpg,
  test/0.jpg) and semilearn's preprocess/README.md ("Semi-Aves": data/semi_fgvc/ holds
  annotation, trainval_images, test, u_train_in, u_train_out, cub, semi_aves).
- the image archives: four Google Drive links in semi-inat-2020's README ("Data and
  Annotations": labeled train and val 533 MB, unlabeled in-class 2.3 GB, out-of-class 11.0 GB,
  test 722 MB; the same data on Kaggle, competition semi-inat-2020), with neither file names
  nor checksums. <folder>.tar.gz is this project's name for each (the downloader saves it so;
  offline, place your copy under it); its format is read from its content (gzipped or plain
  tar, or zip), and that it extracts to <folder>/ is checked, not assumed.

| list          | images  | folder           | what                                         |
| l_train       |   3,959 | trainval_images/ | labeled training images                      |
| l_train_val   |   5,959 | trainval_images/ | l_train and the 2,000 validation images      |
| u_train_in    |  26,640 | u_train_in/      | unlabeled, the 200 classes (label -1)        |
| u_train_out   | 122,208 | u_train_out/     | unlabeled, other bird species (label -1)     |
| u_train       | 148,848 | both             | u_train_in and u_train_out                   |
| test          |   8,000 | test/            | public and private test images, labeled      |

USB's `semi_aves` trains on l_train_val (its configs name the task by l_train's 3,959) with
u_train_in, `semi_aves_out` on l_train_val with u_train_out; the unlabeled set never includes the
labeled images. Options: labeled_list (l_train | l_train_val), unlabeled_list (u_train_in |
u_train_out | u_train), image_size (USB: 224 / crop_ratio 0.875 = 256). The views, as semilearn's
aves.py makes them from images loaded at their own size: the training images (labeled and
unlabeled) squashed to image_size x image_size, as its weak and strong transforms'
Resize((256, 256)) before their crops to train.crop_size; the test images resized with the aspect
kept, as its evaluation transform's Resize(256) (the shorter side to 256), and stored as their
centre square, from which evaluation's centre crop takes CenterCrop(224)'s pixels
(aspect_kept_rgb).

Terms of the release: iNaturalist's terms of service, non-commercial research and education
only, the images not to be redistributed."""
from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .decode import decode_rgb
from .public import OfficialFile, existing, fetch, rerun_hint, unreadable
from .registry import DatasetError, DatasetSpec, ImageData, as_uint8_nchw, register_dataset

LISTS_URL = ("https://raw.githubusercontent.com/cvl-umass/ssl-evaluation/"
             "472f904276532c4a28fb03b014aca0314726fe0d/data/semi_aves")
LIST_FOLDER = "semi_aves"   # semilearn's <data_dir>/semi_fgvc/semi_aves/<list>.txt
LISTS = {name: OfficialFile(f"{LIST_FOLDER}/{name}.txt", f"{LISTS_URL}/{name}.txt", md5)
         for name, md5 in (
    ("l_train", "044672f528472e7697bde81a7afc6617"),
    ("l_train_val", "61d2994cb611e616c3d2c70cbaf89c2d"),
    ("u_train_in", "b52481cdbc146f68ab71e4f34037a431"),
    ("u_train_out", "5562761fb5d79c43cc35bd49fd85fda2"),
    ("u_train", "4d4c9d1360915bd52a71f575596012b1"),
    ("test", "322ecde88fd54af894799a405f58566c"))}
# The image archives by the folder they extract to (as members, so that the offline message
# names it); named here, not by the release (the module's docstring): a copy is accepted when it
# holds every image the lists name, whose sha256s the manifest keeps.
ARCHIVES = {folder: OfficialFile(f"{folder}.tar.gz", f"https://drive.google.com/file/d/{drive_id}/view",
                                 "", {folder: ""})
            for folder, drive_id in (("trainval_images", "1xsgOcEWKG9CszNNT_EXN3YB1OLPYNbf8"),
                                     ("u_train_in", "1BiEkIp8yuqB5Vau_ZAFAhwp8CNoqVjRk"),
                                     ("u_train_out", "18gZhCEKJkxKkUbG49syAuWPdfL0Lm9tp"),
                                     ("test", "1OVEA2lNJnYM5zxh3W_o_Q6K5lsNmJ9Hy"))}
LABELED_LISTS, UNLABELED_LISTS = ("l_train", "l_train_val"), ("u_train_in", "u_train_out", "u_train")
LIST_FOLDERS = {"l_train": ["trainval_images"], "l_train_val": ["trainval_images"],
                "u_train_in": ["u_train_in"], "u_train_out": ["u_train_out"],
                "u_train": ["u_train_in", "u_train_out"], "test": ["test"]}
NUM_CLASSES = 200


def read_list(root: Path, name: str) -> list[tuple[str, int]]:
    """(image path relative to root, label) per line, as USB's make_dataset splits them."""
    path = existing("semi_aves", root / LISTS[name].name)
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise unreadable("semi_aves", path, ValueError(f"line {number} is not `<path> <label>`"))
        entries.append((fields[0], int(fields[1])))
    return entries


def chosen_lists(labeled_list: str, unlabeled_list: str) -> list[str]:
    for option, value, allowed in (("labeled_list", labeled_list, LABELED_LISTS),
                                   ("unlabeled_list", unlabeled_list, UNLABELED_LISTS)):
        if value not in allowed:
            raise DatasetError(f"semi_aves: datasets.semi_aves.{option} is {value!r}; "
                               f"allowed: {', '.join(allowed)}")
    return [labeled_list, unlabeled_list, "test"]


def needed_files(names: list[str]) -> list[OfficialFile]:
    """The lists `names` and the archives of the folders they name."""
    folders = dict.fromkeys(folder for name in names for folder in LIST_FOLDERS[name])
    return [LISTS[name] for name in names] + [ARCHIVES[folder] for folder in folders]


def extracted(dataset_root: Path, folder: str, images: list[str], needed: list[OfficialFile],
              mirror: str | None, md5: dict) -> None:
    """Make sure every listed image of `folder` is there: fetch and extract its archive unless
    they all are (a folder extracted before stands in for its archive)."""
    missing = [image for image in images if not (dataset_root / image).is_file()]
    if not missing:
        return
    official = ARCHIVES[folder]
    archive, _ = fetch("semi_aves", official, dataset_root, needed, mirror, md5)
    try:
        extract_by_content(archive, dataset_root)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"semi_aves: cannot extract {archive} ({error}); delete it and "
                           f"{rerun_hint(dataset_root)}") from error
    missing = [image for image in images if not (dataset_root / image).is_file()]
    if missing:
        raise DatasetError(f"semi_aves: {archive} does not hold {len(missing)} of the "
                           f"{len(images)} images the lists name under {folder}/ (e.g. "
                           f"{', '.join(missing[:3])}); it is not the released {official.name}: "
                           f"delete it and {rerun_hint(dataset_root)}")


def extract_by_content(archive: Path, root: Path) -> None:
    """Extract a zip or a tar (gzipped or not) into root, whatever its name says: the release
    names no archives, so <folder>.tar.gz may hold any of them."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(root)
        return
    with tarfile.open(archive, "r:*") as opened:   # r:*: any compression tarfile reads
        opened.extractall(root, filter="data")


def download_semi_aves(root: Path, *, mirror: str | None, md5: dict, image_size: int,
                       labeled_list: str, unlabeled_list: str) -> list[Path]:
    """The chosen lists and every image they name (the files `load` reads)."""
    names = chosen_lists(labeled_list, unlabeled_list)
    (root / LIST_FOLDER).mkdir(parents=True, exist_ok=True)
    needed = needed_files(names)
    lists = [fetch("semi_aves", LISTS[name], root, needed, mirror, md5)[0] for name in names]
    images = sorted({path for name in names for path, _ in read_list(root, name)})
    by_folder: dict[str, list[str]] = {}
    for image in images:
        by_folder.setdefault(image.split("/")[0], []).append(image)
    unknown = sorted(set(by_folder) - {folder for name in names for folder in LIST_FOLDERS[name]})
    if unknown:
        raise unreadable("semi_aves", root, ValueError(
            f"the lists {', '.join(names)} name images in the folder(s) {unknown}, not the "
            f"release's"))
    for folder, folder_images in by_folder.items():
        extracted(root, folder, folder_images, needed, mirror, md5)
    return lists + [root / image for image in images]


def decoded(root: Path, entries: list[tuple[str, int]], image_size: int, *,
            keep_aspect: bool = False):
    """The listed images and labels: squashed to image_size x image_size (the training views'
    Resize((s, s))), or with keep_aspect as semilearn's evaluation view (aspect_kept_rgb)."""
    if not entries:
        raise DatasetError(f"semi_aves: a list under {root} is empty; delete it and {rerun_hint(root)}")
    decode = decode_aspect_kept if keep_aspect else decode_rgb
    images = np.stack([decode(existing("semi_aves", root / path).read_bytes(), image_size,
                              "semi_aves", str(root / path)) for path, _ in entries])
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    return as_uint8_nchw(images, channels_last=True), labels


def load_semi_aves(root: Path, *, image_size: int, labeled_list: str, unlabeled_list: str,
                   **options) -> ImageData:
    labeled, unlabeled, test = (read_list(root, name)
                                for name in chosen_lists(labeled_list, unlabeled_list))
    for name, entries in ((labeled_list, labeled), ("test", test)):
        bad = [label for _, label in entries if not 0 <= label < NUM_CLASSES]
        if bad:
            raise unreadable("semi_aves", root / LISTS[name].name,
                             ValueError(f"label {bad[0]} is not a class 0..{NUM_CLASSES - 1}"))
    unlabeled_images, _ = decoded(root, unlabeled, image_size)
    return ImageData(*decoded(root, labeled, image_size),
                     *decoded(root, test, image_size, keep_aspect=True),
                     class_names=[str(label) for label in range(NUM_CLASSES)],
                     extra_unlabeled_images=unlabeled_images,
                     extra_unlabeled_labels=torch.full((len(unlabeled),), -1, dtype=torch.int64),
                     unlabeled_includes_train=False)


def decode_aspect_kept(data: bytes, image_size: int, dataset: str, source: str) -> np.ndarray:
    """`data` (the file's bytes, named `source` in errors) as aspect_kept_rgb gives it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return aspect_kept_rgb(image, image_size)
    except (OSError, ValueError, SyntaxError) as error:   # PIL's errors for unreadable files
        raise DatasetError(f"{dataset}: {source} is not an image PIL can read ({error}); it is "
                           f"not the released file: delete it and rerun the `download` rule") from error


def aspect_kept_rgb(image, image_size: int) -> np.ndarray:
    """semilearn's evaluation transform of Semi-Aves (cv_datasets/aves.py) up to its CenterCrop:
    torchvision's Resize(image_size) on the PIL image (the shorter side to image_size, the
    longer to int(image_size * longer / shorter), PIL's bilinear filter), then the centre
    image_size x image_size square at CenterCrop's offsets, round((side - image_size) / 2).
    Evaluation's centre crop of train.crop_size from this square is then the one that
    CenterCrop(crop_size) takes from the resized image whenever image_size - crop_size is a
    multiple of 4 (USB's 256 - 224 = 32; Python's round takes half-integers to the even
    neighbour, so the two offsets add up exactly); otherwise it may sit one pixel off along the
    longer side."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    shorter, longer = min(width, height), max(width, height)
    resized_longer = int(image_size * longer / shorter)
    size = (image_size, resized_longer) if width <= height else (resized_longer, image_size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - image_size) / 2.0))
    top = int(round((size[1] - image_size) / 2.0))
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)


register_dataset(DatasetSpec(name="semi_aves", download=download_semi_aves, load=load_semi_aves))
