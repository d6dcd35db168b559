"""pipeline/workflow/__init__.py: what the Snakefile computes besides the config, on small hand-made
inputs."""
import os

from pipeline.workflow import cpu_training_warning, source_fingerprint

PAPER = {"device": "auto", "steps": 2**20}


def test_a_long_study_on_this_cpu_is_announced_before_it_starts():
    warning = cpu_training_warning(PAPER, 12, local=True, gpu=False)
    assert "12 training run(s) of 1,048,576 steps" in warning and "each run takes days" in warning
    assert cpu_training_warning(PAPER, 12, local=True, gpu=True) is None        # a GPU box
    assert cpu_training_warning(PAPER, 12, local=False, gpu=False) is None      # SLURM
    assert cpu_training_warning({**PAPER, "device": "cpu"}, 1, local=False, gpu=True)
    assert cpu_training_warning({"device": "cpu", "steps": 300}, 54, local=True, gpu=False) is None


def test_the_fingerprint_of_a_folder_changes_with_its_files_only(tmp_path):
    (tmp_path / "cat").mkdir()
    image = tmp_path / "cat" / "1.png"
    image.write_bytes(b"one")
    before = source_fingerprint({"path": str(tmp_path)})
    assert source_fingerprint({"path": str(tmp_path)}) == before
    image.write_bytes(b"three")   # another size
    assert source_fingerprint({"path": str(tmp_path)}) != before
    changed = source_fingerprint({"path": str(tmp_path)})
    os.utime(image, ns=(1, 1))   # the same size, replaced (another time)
    assert source_fingerprint({"path": str(tmp_path)}) != changed
    assert source_fingerprint({"mirror": None}) == ""   # downloads have fixed checksums


def odd_named_image_folder(root):
    """Two classes of PNGs whose names have spaces and hyphens, one file named in Latin-1 (not
    UTF-8): Python reads that name with a surrogate."""
    import pytest
    from PIL import Image

    for name, colour in (("red cat", (200, 0, 0)), ("blue-dog", (0, 0, 200))):
        (root / name).mkdir(parents=True)
        for index in range(5):
            Image.new("RGB", (8, 8), tuple(c + index for c in colour)).save(root / name / f"{index}.png")
    try:
        os.rename(root / "red cat" / "0.png", os.fsencode(root / "red cat") + b"/caf\xe9.png")
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    return root


def test_an_image_whose_name_is_not_utf8_is_fingerprinted_and_read(tmp_path):
    from pipeline.data.download import manifest_for
    from semisup.data import get_dataset

    folder = odd_named_image_folder(tmp_path / "images")
    assert len(source_fingerprint({"path": str(folder)})) == 64   # was a UnicodeEncodeError
    options = {"path": str(folder), "test_fraction": 0.2, "partition_seed": 0, "image_size": 8}
    spec = get_dataset("image_folder")
    manifest = manifest_for("image_folder", tmp_path / "raw",
                            spec.download(tmp_path / "raw", **options), options)
    assert manifest["class_names"] == ["blue-dog", "red cat"]
    data = spec.load(tmp_path / "raw", **options)
    assert len(data.train_labels) + len(data.test_labels) == 10   # the odd name included


def test_a_utf8_name_keeps_the_fingerprint_it_had(tmp_path):
    import hashlib

    (tmp_path / "chat noir").mkdir()
    image = tmp_path / "chat noir" / "café.png"
    image.write_bytes(b"one")
    stat = image.stat()
    before = hashlib.sha256(f"chat noir/café.png\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    assert source_fingerprint({"path": str(tmp_path)}) == before.hexdigest()
