"""CIFAR-10/100, SVHN, STL-10 and image_folder: small files written in each original format, packed
like the official archives, served from a local mirror and run through the real download (md5
verified) and parser."""
import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from semisup.data import DatasetError, get_dataset
from semisup.data import image_folder, public

from pipeline.config import default_params

DATASET_OPTIONS = default_params()["datasets"]


def options(dataset: str, **overrides) -> dict:
    """Every option of `dataset`, params.yaml's defaults with `overrides`."""
    return {**DATASET_OPTIONS[dataset], **overrides}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def pack(mirror: Path, archive_name: str, staging: Path, folder: str) -> str:
    """Pack staging/folder as mirror/archive_name (tar.gz); returns the archive's md5."""
    mirror.mkdir(parents=True, exist_ok=True)
    with tarfile.open(mirror / archive_name, "w:gz") as tar:
        tar.add(staging / folder, arcname=folder)
    return md5_of(mirror / archive_name)


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


@pytest.fixture
def cifar10_mirror(tmp_path):
    """Five training batches of 4 images and a test batch of 10, as in cifar-10-python.tar.gz."""
    rng = np.random.default_rng(0)
    staging, batches = tmp_path / "staging", {}
    for name, count in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 10)]:
        batches[name] = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, count).tolist(), "batch_label": name}
        write_pickle(staging / "cifar-10-batches-py" / name, batches[name])
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(staging / "cifar-10-batches-py" / "batches.meta", {"label_names": names})
    mirror = tmp_path / "mirror"
    md5 = pack(mirror, "cifar-10-python.tar.gz", staging, "cifar-10-batches-py")
    return mirror, {"cifar-10-python.tar.gz": md5}, batches



def fetch_from_mirror(tmp_path, name: str, archive: str, staging, folder: str):
    """Pack `staging` as the archive into a file:// mirror, download the dataset from it with
    that md5, and load it."""
    md5 = pack(tmp_path / "mirror", archive, staging, folder)
    root = tmp_path / "raw" / name
    spec = get_dataset(name)
    spec.download(root, **options(name, mirror=(tmp_path / "mirror").as_uri(), md5={archive: md5}))
    return spec.load(root, **options(name))

def test_cifar10_downloads_verifies_and_parses_the_python_batches(tmp_path, cifar10_mirror):
    mirror, md5, batches = cifar10_mirror
    root = tmp_path / "data" / "raw" / "cifar10"
    spec = get_dataset("cifar10")
    files = spec.download(root, **options(spec.name, mirror=mirror.as_uri(), md5=md5))
    assert (root / "cifar-10-python.tar.gz").exists()
    assert sorted(path.name for path in files) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    data = spec.load(root, **options(spec.name))
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10, 3, 32, 32) and data.test_labels.dtype == torch.int64
    # A row of `data` is the red, green and blue 32x32 planes: (channel 1, row 2, column 3).
    assert data.train_images[0, 1, 2, 3] == batches["data_batch_1"]["data"][0, 1024 + 2 * 32 + 3]
    # Batches are concatenated in order: image 4 is the first of data_batch_2.
    assert data.train_images[4, 2, 31, 0] == batches["data_batch_2"]["data"][0, 2048 + 31 * 32]
    assert data.train_labels[4] == batches["data_batch_2"]["labels"][0]
    assert data.test_labels.tolist() == batches["test_batch"]["labels"]
    assert data.class_names[1] == "automobile" and data.num_classes == 10
    assert data.extra_unlabeled_images is None


@pytest.fixture
def http_mirror(monkeypatch):
    """Serve a folder over HTTP on the loopback interface (no proxy)."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_mirror_goes_through_torchvisions_downloader(tmp_path, cifar10_mirror, http_mirror):
    mirror, md5, batches = cifar10_mirror
    root = tmp_path / "raw" / "cifar10"
    public.download_cifar10(root, mirror=http_mirror(mirror), md5=md5)
    assert public.load_cifar10(root).test_labels.tolist() == batches["test_batch"]["labels"]
    with pytest.raises(DatasetError, match=r"could not download cifar-10-python\.tar\.gz from http"):
        public.download_cifar10(tmp_path / "other", mirror=http_mirror(tmp_path / "empty"), md5=md5)


def test_files_present_with_the_right_md5_are_not_downloaded_again(tmp_path, cifar10_mirror):
    mirror, md5, _ = cifar10_mirror
    root = tmp_path / "raw" / "cifar10"
    first = public.download_cifar10(root, mirror=mirror.as_uri(), md5=md5)
    # The mirror is unreachable now: a second download must not need it.
    again = public.download_cifar10(root, mirror="file:///nonexistent/mirror", md5=md5)
    assert again == first


def test_extracted_files_with_their_md5_stand_in_for_the_archive(tmp_path, cifar10_mirror):
    mirror, md5, _ = cifar10_mirror
    root = tmp_path / "raw" / "cifar10"
    files = public.download_cifar10(root, mirror=mirror.as_uri(), md5=md5)
    (root / "cifar-10-python.tar.gz").unlink()
    member_md5 = {str(path.relative_to(root)): md5_of(path) for path in files}
    assert public.download_cifar10(root, mirror="file:///nonexistent", md5=member_md5) == files


def test_a_wrong_checksum_names_the_file_and_deletes_it(tmp_path, cifar10_mirror):
    mirror, _, _ = cifar10_mirror
    root = tmp_path / "raw" / "cifar10"
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz.*md5 .*expected 0{32}"):
        public.download_cifar10(root, mirror=mirror.as_uri(), md5={"cifar-10-python.tar.gz": "0" * 32})
    assert not (root / "cifar-10-python.tar.gz").exists()


def test_a_corrupt_archive_with_the_expected_checksum_cannot_be_extracted(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "stl10_binary.tar.gz").write_bytes(b"not a gzip file" * 10)
    md5 = {"stl10_binary.tar.gz": md5_of(mirror / "stl10_binary.tar.gz")}
    with pytest.raises(DatasetError, match=r"cannot extract .*stl10_binary\.tar\.gz"):
        public.download_stl10(tmp_path / "raw" / "stl10", mirror=str(mirror), md5=md5)


def test_offline_download_says_which_files_to_place_in_which_folder(tmp_path):
    root = tmp_path / "data" / "raw" / "svhn"
    with pytest.raises(DatasetError) as error:
        public.download_svhn(root, **options("svhn", mirror="file:///nonexistent"))
    message = str(error.value)
    assert "could not download train_32x32.mat" in message
    assert str(root.resolve()) in message
    for split in ("train", "test"):
        official = public.SVHN_FILES[split]
        assert f"{split}_32x32.mat  (md5 {official.md5})  from {official.url}" in message
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in message
    assert "extra_32x32.mat" not in message  # not needed unless extra=True
    assert "rerun snakemake" in message and "datasets.svhn.mirror" in message
    assert not any(root.iterdir())  # no partial file left behind


def test_cifar100_uses_the_fine_labels_and_their_names(tmp_path):
    rng = np.random.default_rng(1)
    staging, content = tmp_path / "staging", {}
    for name, count in (("train", 20), ("test", 10)):
        content[name] = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                         "fine_labels": rng.integers(0, 100, count).tolist(),
                         "coarse_labels": rng.integers(0, 20, count).tolist()}
        write_pickle(staging / "cifar-100-python" / name, content[name])
    write_pickle(staging / "cifar-100-python" / "meta", {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    data = fetch_from_mirror(tmp_path, "cifar100", "cifar-100-python.tar.gz", staging,
                             "cifar-100-python")
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (10, 3, 32, 32)
    assert data.train_labels.tolist() == content["train"]["fine_labels"]
    assert data.num_classes == 100 and data.class_names[7] == "fine7"
    assert data.test_images[9, 0, 31, 31] == content["test"]["data"][9, 1023]


def write_svhn_mat(path: Path, labels: np.ndarray, rng) -> np.ndarray:
    """MATLAB layout: X is (32, 32, 3, N), y is (N, 1) with the digit 0 stored as 10."""
    images = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    savemat(path, {"X": images, "y": labels.reshape(-1, 1).astype(np.uint8)})
    return images


@pytest.fixture
def svhn_mirror(tmp_path):
    rng, mirror = np.random.default_rng(2), tmp_path / "mirror"
    mirror.mkdir()
    labels = {"train": np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2), "test": np.arange(1, 11),
              "extra": np.array([10, 3, 10, 7, 1])}
    images = {split: write_svhn_mat(mirror / f"{split}_32x32.mat", labels[split], rng)
              for split in labels}
    md5 = {f"{split}_32x32.mat": md5_of(mirror / f"{split}_32x32.mat") for split in labels}
    return mirror, md5, images


def test_svhn_maps_label_10_to_digit_0_and_reads_the_matlab_layout(tmp_path, svhn_mirror):
    mirror, md5, images = svhn_mirror
    root = tmp_path / "raw" / "svhn"
    spec = get_dataset("svhn")
    # a plain folder as the mirror
    files = spec.download(root, **options(spec.name, mirror=str(mirror), md5=md5))
    assert sorted(path.name for path in files) == ["test_32x32.mat", "train_32x32.mat"]
    data = spec.load(root, **options(spec.name))
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist()[:3] == [0, 1, 2] and data.test_labels.tolist()[-1] == 0
    # X[row, column, channel, image] is image's (channel, row, column) pixel.
    assert data.train_images[5, 2, 3, 17] == images["train"][3, 17, 2, 5]
    assert data.test_images[9, 0, 31, 0] == images["test"][31, 0, 0, 9]
    assert data.extra_unlabeled_images is None and not spec.inputs.horizontal_flip


def test_svhn_extra_joins_the_unlabeled_data_only(tmp_path, svhn_mirror):
    mirror, md5, images = svhn_mirror
    root = tmp_path / "raw" / "svhn"
    files = public.download_svhn(root, mirror=mirror.as_uri(), md5=md5, extra=True)
    assert "extra_32x32.mat" in [path.name for path in files]
    data = public.load_svhn(root, extra=True)
    assert data.train_images.shape[0] == 20  # labeled candidates stay the train split
    assert data.extra_unlabeled_images.shape == (5, 3, 32, 32)
    assert data.extra_unlabeled_labels.tolist() == [0, 3, 0, 7, 1]
    assert data.extra_unlabeled_images[4, 1, 0, 9] == images["extra"][0, 9, 1, 4]


def stl10_bytes(count: int, rng) -> bytes:
    return rng.integers(0, 256, count * 3 * 96 * 96, dtype=np.uint8).tobytes()


def test_stl10_reads_column_major_binaries_and_shifts_labels(tmp_path):
    rng, staging = np.random.default_rng(3), tmp_path / "staging" / "stl10_binary"
    staging.mkdir(parents=True)
    raw = {"train": stl10_bytes(10, rng), "test": stl10_bytes(5, rng), "unlabeled": stl10_bytes(4, rng)}
    for split, content in raw.items():
        (staging / f"{split}_X.bin").write_bytes(content)
    (staging / "train_y.bin").write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    (staging / "test_y.bin").write_bytes(bytes([10, 9, 8, 7, 1]))
    data = fetch_from_mirror(tmp_path, "stl10", "stl10_binary.tar.gz", tmp_path / "staging",
                             "stl10_binary")
    assert data.train_images.shape == (10, 3, 96, 96) and data.test_images.shape == (5, 3, 96, 96)
    assert data.train_labels.tolist() == list(range(10)) and data.test_labels.tolist() == [9, 8, 7, 6, 0]
    assert data.class_names[0] == "airplane" and data.class_names[9] == "truck"

    def stored(content: bytes, image: int, channel: int, row: int, column: int) -> int:
        # Each channel plane is stored column by column: byte column * 96 + row.
        return content[image * 27648 + channel * 9216 + column * 96 + row]

    for pixel in [(0, 0, 0, 1), (3, 1, 5, 70), (9, 2, 95, 2)]:
        assert data.train_images[pixel] == stored(raw["train"], *pixel)
    assert data.extra_unlabeled_images.shape == (4, 3, 96, 96)
    assert data.extra_unlabeled_images[2, 2, 40, 7] == stored(raw["unlabeled"], 2, 2, 40, 7)
    assert data.extra_unlabeled_labels.tolist() == [-1] * 4


def test_load_before_download_says_to_run_the_download_rule(tmp_path):
    with pytest.raises(DatasetError, match=r"data_batch_1 is missing; run the `download` rule"):
        get_dataset("cifar10").load(tmp_path / "raw" / "cifar10")


def test_official_urls_and_checksums_are_torchvisions():
    from torchvision import datasets

    for ours, theirs in ((public.CIFAR10_ARCHIVE, datasets.CIFAR10),
                         (public.CIFAR100_ARCHIVE, datasets.CIFAR100),
                         (public.STL10_ARCHIVE, datasets.STL10)):
        assert (ours.url, ours.name, ours.md5) == (theirs.url, theirs.filename, theirs.tgz_md5)
        members = {f"{theirs.base_folder}/{name}": md5 for name, md5 in theirs.train_list + theirs.test_list}
        assert members.items() <= ours.members.items()
    assert {s: [f.url, f.name, f.md5] for s, f in public.SVHN_FILES.items()} == datasets.SVHN.split_list


def test_registered_specs_follow_the_classic_protocol():
    names = ("cifar10", "cifar100", "svhn", "stl10")
    assert [get_dataset(name).num_classes for name in names] == [10, 100, 10, 10]
    assert [get_dataset(name).inputs.horizontal_flip for name in names] == [True, True, False, True]
    assert [get_dataset(name).inputs.channels for name in names] == [3, 3, 3, 3]
    assert default_params()["datasets"]["svhn"]["extra"] is False


@pytest.fixture
def png_folder(tmp_path):
    """Three classes of five solid-colour PNGs of odd sizes; the colour encodes the class."""
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10), "fox": (10, 10, 200)}
    for name, colour in colours.items():
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (10 + i, 12), colour).save(tmp_path / "pets" / name / f"{i}.png")
    (tmp_path / "pets" / "notes.txt").write_text("not a class")
    return tmp_path / "pets", colours


def test_image_folder_partitions_each_class_with_a_seed_and_resizes(tmp_path, png_folder):
    folder, colours = png_folder
    root = tmp_path / "raw" / "image_folder"
    spec = get_dataset("image_folder")
    options = {"path": str(folder), "test_fraction": 0.4, "partition_seed": 3, "image_size": 8}
    files = spec.download(root, **options)
    assert [path.name for path in files] == ["image_folder_index.json"]
    data = spec.load(root, **options)
    assert data.class_names == ["cat", "dog", "fox"]
    assert data.train_images.shape == (9, 3, 8, 8) and data.test_images.shape == (6, 3, 8, 8)
    assert data.train_images.dtype == torch.uint8
    assert torch.bincount(data.test_labels).tolist() == [2, 2, 2]
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        expected = torch.tensor([colours[data.class_names[label]] for label in labels], dtype=torch.uint8)
        assert torch.equal(images[:, :, 4, 4], expected)
    again = spec.load(root, **options)
    assert torch.equal(again.test_images, data.test_images)
    other = spec.load(root, **{**options, "partition_seed": 4})
    assert torch.bincount(other.test_labels).tolist() == [2, 2, 2]


def test_image_folder_notices_an_image_changed_after_download(tmp_path, png_folder):
    folder, _ = png_folder
    root = tmp_path / "raw" / "image_folder"
    image_folder.download_image_folder(root, **options("image_folder", path=str(folder)))
    Image.new("RGB", (4, 4), (0, 0, 0)).save(folder / "dog" / "2.png")
    with pytest.raises(DatasetError, match=r"dog/2\.png changed since the download"):
        image_folder.load_image_folder(root, **options("image_folder", path=str(folder)))


def test_image_folder_with_a_missing_path_says_what_to_set(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError, match=f"{missing} is not a folder; set datasets.image_folder.path"):
        get_dataset("image_folder").download(tmp_path / "raw", **options("image_folder", path=str(missing)))
    with pytest.raises(DatasetError, match="no path given"):
        get_dataset("image_folder").download(tmp_path / "raw", **options("image_folder"))


def test_image_folder_needs_two_class_folders_with_images(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DatasetError, match="1 class sub-folder"):
        get_dataset("image_folder").download(tmp_path / "raw",
                                             **options("image_folder", path=str(tmp_path / "one")))


def two_classes(root: Path) -> Path:
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (root / name).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (4, 4), colour).save(root / name / f"{index}.png")
    return root


def test_an_empty_class_folder_is_an_error_not_a_missing_class(tmp_path):
    folder = two_classes(tmp_path / "images")
    (folder / "green").mkdir()
    with pytest.raises(DatasetError, match=r"class folder\(s\) green in .* hold no images"):
        get_dataset("image_folder").download(tmp_path / "raw",
                                             **options("image_folder", path=str(folder)))


def test_a_16_bit_gray_png_is_scaled_not_clipped_to_white(tmp_path):
    folder = two_classes(tmp_path / "images")
    gray = np.full((4, 4), 32896, dtype=np.uint16)   # 32896 / 65535 * 255 = 128.0
    Image.fromarray(gray).save(folder / "red" / "0.png")
    assert Image.open(folder / "red" / "0.png").mode.startswith("I")
    image = image_folder.read_image(folder / "red" / "0.png",
                              hashlib.sha256((folder / "red" / "0.png").read_bytes()).hexdigest(), 4)
    assert image.shape == (4, 4, 3) and (image == 128).all()


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    folder = two_classes(tmp_path / "images")
    (folder / "red" / "broken.png").write_bytes(b"not a png")
    spec, settings = get_dataset("image_folder"), options("image_folder", path=str(folder))
    spec.download(tmp_path / "raw", **settings)   # lists and hashes; the download rule loads next
    with pytest.raises(DatasetError, match=r"broken\.png is not an image PIL can read"):
        spec.load(tmp_path / "raw", **settings)
