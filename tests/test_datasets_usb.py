"""USB's CV datasets (EuroSAT, TissueMNIST, Semi-Aves): small files in each release's own format
(EuroSAT's zip of class folders of JPEGs, MedMNIST's npz, Semi-Aves' lists and tar.gz image
archives), served from a file:// mirror through the real download (md5 verified), load and split
code; CIFAR-100's and STL-10's USB budgets."""
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semisup.data import DatasetError, get_dataset
from semisup.data import eurosat, semi_aves, tissuemnist
from semisup.data.ctaugment import CTAugmentSettings
from semisup.data.image import ImageAugment, image_train_data
from semisup.data.splits import make_split, release_split
from semisup.errors import SplitError

from pipeline.config import default_params, load_study
from pipeline.data import download, split
from pipeline.errors import ConfigError

DATASET_OPTIONS = default_params()["datasets"]


def options(dataset: str, **overrides) -> dict:
    """Every option of `dataset`, params.yaml's defaults with `overrides`."""
    return {**DATASET_OPTIONS[dataset], **overrides}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def jpeg_bytes(colour, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def usb_resized(data: bytes, size: int) -> np.ndarray:
    """What USB feeds its network: the decoded image through torchvision's Resize(size)."""
    from torchvision import transforms

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(transforms.Resize(size)(image.convert("RGB")))


# ---------------------------------------------------------------------------------------------
# EuroSAT

EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]


@pytest.fixture
def eurosat_mirror(tmp_path):
    """EuroSAT.zip as torchvision downloads it: 2750/<class>/<class>_<n>.jpg, 64x64 JPEGs; class
    k has 5 + k % 2 images numbered 1..n, so that _10 sorts before _2 where there are ten."""
    mirror, files = tmp_path / "mirror", {}
    mirror.mkdir()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(mirror / "EuroSAT.zip", "w") as archive:
        for label, name in enumerate(reversed(EUROSAT_CLASSES)):   # stored out of order
            count = 10 if name == "AnnualCrop" else 5 + (9 - label) % 2
            for number in range(1, count + 1):
                member = f"2750/{name}/{name}_{number}.jpg"
                files[member] = jpeg_bytes(tuple(int(v) for v in rng.integers(0, 256, 3)), 64)
                archive.writestr(member, files[member])
    return mirror, {"EuroSAT.zip": md5_of(mirror / "EuroSAT.zip")}, files


def test_eurosat_reads_the_zip_and_splits_each_class_as_usb(tmp_path, eurosat_mirror):
    mirror, md5, files = eurosat_mirror
    root = tmp_path / "raw" / "eurosat"
    spec = get_dataset("eurosat")
    written = spec.download(root, **options("eurosat", mirror=mirror.as_uri(), md5=md5))
    assert written == [root / "EuroSAT.zip"]
    data = spec.load(root, **options("eurosat"))
    assert data.class_names == EUROSAT_CLASSES and data.num_classes == 10
    # AnnualCrop: 10 images -> 8 train, 2 test; 5 -> 4 + 1; 6 -> 4 + 2 (int(0.8 * 6) = 4).
    counts = [10] + [5 + (9 - label) % 2 for label in range(8, -1, -1)]
    assert torch.bincount(data.train_labels).tolist() == [int((0.6 + 0.2) * n) for n in counts]
    assert torch.bincount(data.test_labels).tolist() == [n - int((0.6 + 0.2) * n) for n in counts]
    assert data.train_images.shape == (len(data.train_labels), 3, 32, 32)
    assert data.train_images.dtype == torch.uint8
    # ImageFolder's order sorts file names as strings: _1, _10, _2, ..., _7 train; _8, _9 test.
    order = sorted(f"AnnualCrop_{n}.jpg" for n in range(1, 11))
    assert order[:3] == ["AnnualCrop_1.jpg", "AnnualCrop_10.jpg", "AnnualCrop_2.jpg"]
    for position, image in enumerate(data.train_images[:8]):
        expected = usb_resized(files[f"2750/AnnualCrop/{order[position]}"], 32)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(data.test_images[1].permute(1, 2, 0).numpy(),
                          usb_resized(files["2750/AnnualCrop/AnnualCrop_9.jpg"], 32))


def test_eurosat_at_its_native_64_pixels_is_the_decoded_jpeg(tmp_path, eurosat_mirror):
    mirror, md5, files = eurosat_mirror
    root = tmp_path / "raw" / "eurosat"
    eurosat.download_eurosat(root, mirror=str(mirror), md5=md5, image_size=64)
    data = eurosat.load_eurosat(root, image_size=64)
    first = np.asarray(Image.open(io.BytesIO(files["2750/AnnualCrop/AnnualCrop_1.jpg"])))
    assert np.array_equal(data.train_images[0].permute(1, 2, 0).numpy(), first)


def test_eurosat_url_and_md5_are_torchvisions():
    import inspect

    from torchvision.datasets import EuroSAT

    source = inspect.getsource(EuroSAT.download)
    assert eurosat.EUROSAT_ZIP.url in source and eurosat.EUROSAT_ZIP.md5 in source


def test_a_eurosat_zip_with_the_wrong_md5_is_refused_naming_the_file_and_the_fix(tmp_path,
                                                                                 eurosat_mirror):
    mirror, _, _ = eurosat_mirror   # the official md5: the tiny zip is not the official file
    root = tmp_path / "raw" / "eurosat"
    with pytest.raises(DatasetError) as error:
        eurosat.download_eurosat(root, mirror=mirror.as_uri(), md5={}, image_size=32)
    message = str(error.value)
    assert f"EuroSAT.zip downloaded from {mirror.as_uri()}/EuroSAT.zip has md5 " in message
    assert f"expected {eurosat.EUROSAT_ZIP.md5}" in message
    assert f"Place a correct copy in {root.resolve()}/" in message
    assert not (root / "EuroSAT.zip").exists()


# ---------------------------------------------------------------------------------------------
# TissueMNIST

@pytest.fixture
def tissuemnist_mirror(tmp_path):
    """tissuemnist.npz in MedMNIST's layout: <split>_images (N, 28, 28) uint8, <split>_labels
    (N, 1)."""
    rng, mirror = np.random.default_rng(1), tmp_path / "mirror"
    mirror.mkdir()
    arrays = {}
    for split_name, count in (("train", 24), ("val", 4), ("test", 8)):
        arrays[f"{split_name}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split_name}_labels"] = (np.arange(count) % 8).reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(mirror / "tissuemnist.npz", **arrays)
    return mirror, {"tissuemnist.npz": md5_of(mirror / "tissuemnist.npz")}, arrays


def test_tissuemnist_is_gray_copied_to_rgb_and_resized_as_usb(tmp_path, tissuemnist_mirror):
    mirror, md5, arrays = tissuemnist_mirror
    root = tmp_path / "raw" / "tissuemnist"
    spec = get_dataset("tissuemnist")
    files = spec.download(root, **options("tissuemnist", mirror=mirror.as_uri(), md5=md5))
    assert files == [root / "tissuemnist.npz"]
    data = spec.load(root, **options("tissuemnist"))
    assert data.train_images.shape == (24, 3, 32, 32) and data.test_images.shape == (8, 3, 32, 32)
    assert data.train_labels.tolist() == [i % 8 for i in range(24)]
    assert data.num_classes == 8 and data.class_names[4] == "Leukocytes"
    # USB: Image.fromarray(gray).convert("RGB") (as_rgb), then transforms.Resize(32).
    from torchvision import transforms

    for index in (0, 23):
        usb = np.asarray(transforms.Resize(32)(Image.fromarray(arrays["train_images"][index]).convert("RGB")))
        assert np.array_equal(data.train_images[index].permute(1, 2, 0).numpy(), usb)
    assert torch.equal(data.test_images[:, 0], data.test_images[:, 2])
    native = tissuemnist.load_tissuemnist(root, image_size=28)
    assert np.array_equal(native.test_images[3, 1].numpy(), arrays["test_images"][3])


def test_tissuemnist_offline_says_which_file_to_place_where(tmp_path):
    root = tmp_path / "data" / "raw" / "tissuemnist"
    with pytest.raises(DatasetError) as error:
        get_dataset("tissuemnist").download(root, **options("tissuemnist", mirror="file:///nonexistent"))
    message = str(error.value)
    official = tissuemnist.TISSUEMNIST_NPZ
    assert "could not download tissuemnist.npz" in message
    assert f"tissuemnist.npz  (md5 {official.md5})  from {official.url}" in message
    assert "zenodo.org" in official.url and str(root.resolve()) in message
    assert "rerun snakemake" in message and "datasets.tissuemnist.mirror" in message
    assert not any(root.iterdir())


def test_a_corrupt_tissuemnist_npz_is_refused_and_deleted(tmp_path, tissuemnist_mirror):
    mirror, _, _ = tissuemnist_mirror
    root = tmp_path / "raw" / "tissuemnist"
    with pytest.raises(DatasetError, match=r"tissuemnist\.npz .* has md5 [0-9a-f]{32}, expected "
                                           r"ebe78ee8b05294063de985d821c1c34b"):
        tissuemnist.download_tissuemnist(root, mirror=mirror.as_uri(), md5={}, image_size=32)
    assert not (root / "tissuemnist.npz").exists()


def test_an_npz_without_the_medmnist_arrays_is_named(tmp_path):
    root = tmp_path / "raw" / "tissuemnist"
    root.mkdir(parents=True)
    np.savez(root / "tissuemnist.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"cannot read .*tissuemnist\.npz .*train_images"):
        tissuemnist.load_tissuemnist(root, image_size=32)


# ---------------------------------------------------------------------------------------------
# Semi-Aves

SEMI_AVES_CLASSES = 200
SEMI_AVES_TEST_SIZES = [(40, 30), (30, 41), (53, 20), (20, 20)]   # (width, height)


@pytest.fixture
def semi_aves_mirror(tmp_path):
    """The release in miniature, laid out as semilearn's semi_fgvc/: trainval_images/<class>/
    <n>.jpg (3 labeled images of 4 classes in l_train, one more each in l_train_val),
    u_train_in/<n>.jpg (5, label -1), test/<n>.jpg (4 of random pixels, wide and tall), each
    folder as <folder>.tar.gz, and the lists in semi_aves/<list>.txt."""
    staging, mirror = tmp_path / "staging", tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(2)
    lists: dict[str, list[str]] = {"l_train": [], "l_train_val": [], "u_train_in": [], "test": []}

    def image(path: str, size, noise: bool = False) -> None:
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        picture = Image.new("RGB", size, colour) if not noise else Image.fromarray(
            rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        picture.save(staging / path, "JPEG")

    for label in (0, 7, 150, 199):
        for number in range(4):
            path = f"trainval_images/{label}/{number}.jpg"
            image(path, (40, 30))
            lists["l_train_val"].append(f"{path} {label}")
            if number < 3:
                lists["l_train"].append(f"{path} {label}")
    for number in range(5):
        image(f"u_train_in/{number}.jpg", (20, 50))
        lists["u_train_in"].append(f"u_train_in/{number}.jpg -1")
    for (number, label), size in zip(enumerate((199, 0, 7, 150)), SEMI_AVES_TEST_SIZES, strict=True):
        image(f"test/{number}.jpg", size, noise=True)
        lists["test"].append(f"test/{number}.jpg {label}")
    md5 = {}
    (mirror / "semi_aves").mkdir()
    for name, lines in lists.items():
        (mirror / f"semi_aves/{name}.txt").write_text("\n".join(lines) + "\n")
        md5[f"semi_aves/{name}.txt"] = md5_of(mirror / f"semi_aves/{name}.txt")
    for folder in ("trainval_images", "u_train_in", "test"):
        with tarfile.open(mirror / f"{folder}.tar.gz", "w:gz") as tar:
            tar.add(staging / folder, arcname=folder)
        md5[f"{folder}.tar.gz"] = md5_of(mirror / f"{folder}.tar.gz")
    return mirror, md5, staging


def test_semi_aves_keeps_the_release_labeled_and_unlabeled_sets_apart(tmp_path, semi_aves_mirror):
    mirror, md5, staging = semi_aves_mirror
    root = tmp_path / "raw" / "semi_aves"
    spec, settings = get_dataset("semi_aves"), options("semi_aves", image_size=16)
    files = spec.download(root, **{**settings, "mirror": mirror.as_uri(), "md5": md5})
    names = [str(path.relative_to(root)) for path in files]
    assert names[:3] == ["semi_aves/l_train.txt", "semi_aves/u_train_in.txt", "semi_aves/test.txt"]
    assert "trainval_images/7/2.jpg" in names and "trainval_images/7/3.jpg" not in names
    data = spec.load(root, **settings)
    assert data.train_images.shape == (12, 3, 16, 16) and data.num_classes == SEMI_AVES_CLASSES
    assert data.train_labels.tolist() == [0] * 3 + [7] * 3 + [150] * 3 + [199] * 3
    assert data.test_labels.tolist() == [199, 0, 7, 150]
    assert data.extra_unlabeled_images.shape == (5, 3, 16, 16)
    assert data.extra_unlabeled_labels.tolist() == [-1] * 5
    expected = usb_resized((staging / "u_train_in/3.jpg").read_bytes(), (16, 16))
    assert np.array_equal(data.extra_unlabeled_images[3].permute(1, 2, 0).numpy(), expected)
    # The data layer's unlabeled pool is u_train_in alone (USB never adds the labeled images).
    augment = ImageAugment(horizontal_flip=True, pad_fraction=0.125, strong="fixmatch",
                           ctaugment=CTAugmentSettings(**default_params()["train"]["ctaugment"]),
                           vertical_flip=False, rand_augment_ops="all", crop_size=None,
                           strong_crop="pad_crop", resized_crop_scale=(0.08, 1.0),
                           resized_crop_ratio=(3 / 4, 4 / 3))
    train_data = image_train_data(data, torch.arange(12), spec.inputs, augment, False, "cpu")
    assert train_data.modality.size("unlabeled") == 5 and train_data.modality.size("train") == 12
    assert train_data.unlabeled_labels.tolist() == [-1] * 5
    assert train_data.facts(SEMI_AVES_CLASSES).num_unlabeled == 5


def test_semi_aves_l_train_val_and_extracted_folders_stand_in_for_the_archives(tmp_path,
                                                                                semi_aves_mirror):
    mirror, md5, _ = semi_aves_mirror
    root = tmp_path / "raw" / "semi_aves"
    settings = options("semi_aves", image_size=8, labeled_list="l_train_val")
    semi_aves.download_semi_aves(root, **{**settings, "mirror": mirror.as_uri(), "md5": md5})
    for folder in ("trainval_images", "u_train_in", "test"):
        (root / f"{folder}.tar.gz").unlink()
    # Offline now: the lists and the extracted images are all that is needed.
    again = semi_aves.download_semi_aves(root, **{**settings, "mirror": "file:///nonexistent", "md5": md5})
    assert len(again) == 3 + 16 + 5 + 4
    assert semi_aves.load_semi_aves(root, **settings).train_images.shape == (16, 3, 8, 8)


def test_semi_aves_offline_names_every_file_it_needs_and_where(tmp_path):
    root = tmp_path / "data" / "raw" / "semi_aves"
    with pytest.raises(DatasetError) as error:
        get_dataset("semi_aves").download(root, **options("semi_aves", mirror="file:///nonexistent"))
    message = str(error.value)
    assert "could not download semi_aves/l_train.txt" in message and str(root.resolve()) in message
    for name in ("l_train", "u_train_in", "test"):
        listed = semi_aves.LISTS[name]
        assert f"{listed.name}  (md5 {listed.md5})  from {listed.url}" in message
    for folder in ("trainval_images", "u_train_in", "test"):
        archive = semi_aves.ARCHIVES[folder]
        assert f"{archive.name}  (no published md5)  from {archive.url}" in message
    assert "u_train_out" not in message   # not needed for the in-class unlabeled set
    assert "the folder test/, trainval_images/, u_train_in/" in message
    assert "datasets.semi_aves.mirror" in message


def test_a_semi_aves_archive_with_the_wrong_md5_or_missing_images_is_refused(tmp_path,
                                                                          semi_aves_mirror):
    mirror, md5, staging = semi_aves_mirror
    settings = options("semi_aves", image_size=8, mirror=mirror.as_uri())
    wrong = {**md5, "test.tar.gz": "0" * 32}
    root = tmp_path / "raw" / "one"
    with pytest.raises(DatasetError, match=r"test\.tar\.gz downloaded from .* expected 0{32}.*"
                                           r"Place a correct copy in"):
        semi_aves.download_semi_aves(root, **{**settings, "md5": wrong})
    assert not (root / "test.tar.gz").exists()
    # An archive that lacks listed images (no md5 given: the release publishes none).
    with tarfile.open(mirror / "test.tar.gz", "w:gz") as tar:
        tar.add(staging / "test" / "0.jpg", arcname="test/0.jpg")
    unpinned = {key: value for key, value in md5.items() if key != "test.tar.gz"}
    with pytest.raises(DatasetError, match=r"test\.tar\.gz does not hold 3 of the 4 images .* "
                                           r"test/1\.jpg.*delete it"):
        semi_aves.download_semi_aves(tmp_path / "raw" / "two", **{**settings, "md5": unpinned})


def semilearn_evaluation_view(path: Path, resize: int, crop: int, mean, std) -> torch.Tensor:
    """semilearn 0.3.2's transform_val of Semi-Aves (cv_datasets/aves.py: Resize(floor(img_size /
    crop_ratio)), CenterCrop(img_size), ToTensor, Normalize) on its loader's PIL image."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    with Image.open(path) as image:
        return transform(image.convert("RGB"))


def test_semi_aves_evaluation_view_keeps_the_aspect_ratio_as_semilearns_transform(
        tmp_path, semi_aves_mirror):
    """Evaluation sees each test image as semilearn's Resize of the shorter side and CenterCrop
    make it (16 and 12 here for its 256 and 224), on wide, tall and square JPEGs of random
    pixels: equal up to float rounding, and not what squashing the image would give."""
    from pipeline.config import default_train_options
    from pipeline.runs.train import image_augment

    mirror, md5, staging = semi_aves_mirror
    root, spec = tmp_path / "raw" / "semi_aves", get_dataset("semi_aves")
    settings = options("semi_aves", image_size=16)
    spec.download(root, **{**settings, "mirror": mirror.as_uri(), "md5": md5})
    data = spec.load(root, **settings)
    assert data.test_images.shape == (4, 3, 16, 16)
    augment = image_augment(default_train_options("semi_aves", crop_size=12,
                                                  strong_crop="resized_crop"))
    modality = image_train_data(data, torch.arange(12), spec.inputs, augment, False,
                                torch.device("cpu")).modality
    evaluated = torch.cat(list(modality.batches("test", 3)))
    mean, std = spec.inputs.mean, spec.inputs.std
    for number, (width, height) in enumerate(SEMI_AVES_TEST_SIZES):
        path = staging / f"test/{number}.jpg"
        expected = semilearn_evaluation_view(path, 16, 12, mean, std)
        assert torch.allclose(evaluated[number], expected, atol=1e-5), (width, height)
        squashed = semilearn_evaluation_view(path, (16, 16), 12, mean, std)
        assert torch.allclose(evaluated[number], squashed, atol=1e-5) == (width == height)


@pytest.mark.parametrize("form", ["tar", "zip"])
def test_a_semi_aves_archive_is_extracted_by_its_content_whatever_its_name(tmp_path, form,
                                                                           semi_aves_mirror):
    """The release names no archives: a plain tar or a zip saved as <folder>.tar.gz is read."""
    mirror, md5, staging = semi_aves_mirror
    archive = mirror / "test.tar.gz"
    if form == "zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted((staging / "test").iterdir()):
                zipped.write(path, f"test/{path.name}")
    else:
        with tarfile.open(archive, "w") as tar:
            tar.add(staging / "test", arcname="test")
    unpinned = {key: value for key, value in md5.items() if key != "test.tar.gz"}
    root, settings = tmp_path / "raw" / "semi_aves", options("semi_aves", image_size=8)
    semi_aves.download_semi_aves(root, **{**settings, "mirror": mirror.as_uri(), "md5": unpinned})
    assert semi_aves.load_semi_aves(root, **settings).test_images.shape == (4, 3, 8, 8)


def test_semi_aves_pinned_lists_have_the_release_counts():
    counts = dict(get_dataset("semi_aves").facts.release_labels.counts)
    assert counts == {"l_train": 3959, "l_train_val": 5959}
    assert set(semi_aves.LISTS) == {"l_train", "l_train_val", "u_train_in", "u_train_out",
                                    "u_train", "test"}
    assert all("cvl-umass/ssl-evaluation/472f904" in listed.url for listed in semi_aves.LISTS.values())
    # where semilearn's make_dataset reads them: <data_dir>/semi_fgvc/semi_aves/<list>.txt
    assert all(listed.name == f"semi_aves/{name}.txt" for name, listed in semi_aves.LISTS.items())


# ---------------------------------------------------------------------------------------------
# Splits and budgets

def test_a_release_split_labels_the_whole_training_set_and_checks_n_labels():
    split_file = release_split(12, 12, seed=3, dataset="semi_aves", labeled_by="labeled_list l_train")
    assert split_file["labeled_indices"] == list(range(12)) and split_file["labeled_set"] == "release"
    assert release_split(12, 12, 4, "semi_aves", "x")["split_sha256"] == split_file["split_sha256"]
    with pytest.raises(SplitError, match=r"n_labels=400, but the labeled set of semi_aves is fixed "
                                         r"by its release: labeled_list l_train has 12 .*\[12\]"):
        release_split(12, 400, 0, "semi_aves", "labeled_list l_train")


def test_the_split_rule_takes_semi_aves_labeled_set_from_the_manifest(tmp_path, semi_aves_mirror):
    mirror, md5, _ = semi_aves_mirror
    settings = options("semi_aves", image_size=8, mirror=mirror.as_uri(), md5=md5)
    manifest = tmp_path / "raw" / "semi_aves" / "key" / "manifest.json"
    download.main(["--dataset", "semi_aves", "--options", json.dumps(settings),
                   "--manifest", str(manifest)])
    shapes = json.loads(manifest.read_text())["shapes"]
    assert shapes == {"train_images": [12, 3, 8, 8], "test_images": [4, 3, 8, 8],
                      "extra_unlabeled_images": [5, 3, 8, 8]}
    out = tmp_path / "splits" / "seed0.json"
    split.main(["--manifest", str(manifest), "--n-labels", "12", "--seed", "0", "--out", str(out)])
    assert json.loads(out.read_text())["labeled_indices"] == list(range(12))
    with pytest.raises(SystemExit):
        split.main(["--manifest", str(manifest), "--n-labels", "3959", "--seed", "0",
                    "--out", str(tmp_path / "bad.json")])


def study_with(dataset: str, n_labels: list[int], **dataset_options) -> dict:
    config = default_params()
    config["study"] = {**config["study"], "dataset": dataset, "n_labels": n_labels}
    config["datasets"][dataset] = {**config["datasets"][dataset], **dataset_options}
    return config


@pytest.mark.parametrize("dataset, budgets", [("eurosat", [20, 40]), ("tissuemnist", [80, 400]),
                                              ("cifar100", [200, 400]), ("stl10", [40, 100]),
                                              ("semi_aves", [3959])])
def test_usb_cv_label_budgets_are_valid_studies(dataset, budgets):
    load_study(study_with(dataset, budgets))


def test_semi_aves_budget_must_be_the_release_labeled_count():
    with pytest.raises(ConfigError, match=r"study\.n_labels contains 400, but the labeled set of "
                                          r"semi_aves is fixed by its release: datasets\.semi_aves\."
                                          r"labeled_list l_train has 3959 labeled images "
                                          r"\(l_train: 3959, l_train_val: 5959\); use n_labels \[3959\]"):
        load_study(study_with("semi_aves", [400]))
    load_study(study_with("semi_aves", [5959], labeled_list="l_train_val"))


def test_cifar100_and_stl10_usb_budgets_draw_balanced_splits():
    labels = np.repeat(np.arange(100), 5)
    for n_labels in (200, 400):
        chosen = make_split(labels, n_labels, 100, seed=0, dataset="cifar100")["labeled_indices"]
        assert np.bincount(labels[chosen], minlength=100).tolist() == [n_labels // 100] * 100
    labels = np.repeat(np.arange(10), 12)
    for n_labels in (40, 100):
        chosen = make_split(labels, n_labels, 10, seed=1, dataset="stl10")["labeled_indices"]
        assert np.bincount(labels[chosen]).tolist() == [n_labels // 10] * 10


def test_usb_cv_facts_resolution_channels_and_statistics():
    facts = {name: get_dataset(name).facts for name in ("eurosat", "tissuemnist", "semi_aves")}
    assert [f.num_classes for f in facts.values()] == [10, 8, 200]
    assert all(f.inputs.channels == 3 for f in facts.values())
    assert facts["eurosat"].inputs.mean == (0.5, 0.5, 0.5) == facts["tissuemnist"].inputs.std
    assert facts["semi_aves"].inputs.mean == (0.485, 0.456, 0.406)
    assert [DATASET_OPTIONS[name]["image_size"] for name in facts] == [32, 32, 224]
    assert facts["eurosat"].release_labels is None and facts["tissuemnist"].release_labels is None


def test_eurosat_offline_says_which_file_to_place_where(tmp_path):
    root = tmp_path / "data" / "raw" / "eurosat"
    with pytest.raises(DatasetError) as error:
        get_dataset("eurosat").download(root, **options("eurosat", mirror="file:///nonexistent"))
    message = str(error.value)
    assert f"EuroSAT.zip  (md5 {eurosat.EUROSAT_ZIP.md5})  from {eurosat.EUROSAT_ZIP.url}" in message
    assert str(root.resolve()) in message and "datasets.eurosat.mirror" in message


def test_flexmatch_trains_on_semi_aves_with_its_separate_unlabeled_set(tmp_path, semi_aves_mirror):
    """Two FlexMatch steps (its per-sample state sized by the unlabeled set: 5 images, not the
    12 labeled + 5) with the small 32 px CNN."""
    from semisup.algorithms import build_algorithm
    from semisup.models import build_network
    from semisup.train import Trainer

    from pipeline.config import default_train_options
    from pipeline.runs.train import image_augment, train_config

    mirror, md5, _ = semi_aves_mirror
    root, spec = tmp_path / "raw" / "semi_aves", get_dataset("semi_aves")
    settings = options("semi_aves", image_size=32)
    spec.download(root, **{**settings, "mirror": mirror.as_uri(), "md5": md5})
    data = spec.load(root, **settings)
    train_options = default_train_options("semi_aves", steps=2, batch_size=4, uratio=2, eval_every=2,
                                          log_every=1, checkpoint_every=2, last_k=1)
    train_data = image_train_data(data, torch.arange(12), spec.inputs, image_augment(train_options),
                                  False, torch.device("cpu"))
    facts = train_data.facts(SEMI_AVES_CLASSES)
    assert (facts.num_labeled, facts.num_unlabeled) == (12, 5)
    torch.manual_seed(0)
    model = build_network("cnn32", SEMI_AVES_CLASSES, spec.inputs, **default_params()["models"]["cnn32"])
    hyperparameters = default_params()["algorithms"]["flexmatch"]
    algorithm = build_algorithm("flexmatch", {**hyperparameters, "tau": 0.0}, facts=facts,
                                total_steps=2)
    result = Trainer(model, algorithm, train_data, train_config(train_options), 0,
                     torch.device("cpu")).fit()
    assert [point["step"] for point in result.curve] == [2.0]
    assert result.stat_history[-1]["train/loss_unsup"] > 0
