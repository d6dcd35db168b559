"""pipeline/workflow/__init__.py: what the Snakefile computes besides the config, on small hand-made
inputs."""
import os

from pipeline.workflow import source_fingerprint
from pipeline.workflow.devices import device_warning

PAPER = {"device": "auto", "steps": 2**20, "batch_size": 64, "uratio": 7, "threads": 4}


def test_a_long_study_on_a_cpu_is_announced_with_an_estimate():
    warning = device_warning(PAPER, "wrn_28_2", 63, local=True, gpu=False)
    # 960 images a step at 0.028 core-seconds each (benchmarks/README.md), on 4 threads
    assert "63 training run(s) of 1,048,576 steps each (wrn_28_2, 960 images a step)" in warning
    assert "about 6.8 s a step with 4 thread(s)" in warning and "about 83 days" in warning
    assert "They want a GPU" in warning
    huge = device_warning({**PAPER, "steps": 10**12}, "wrn_28_2", 1, local=True, gpu=False)
    assert "about 215,627 years" in huge
    assert device_warning(PAPER, "wrn_28_2", 63, local=True, gpu=True) is None     # a GPU box
    assert device_warning(PAPER, "wrn_28_2", 63, local=False, gpu=False) is None   # SLURM
    assert device_warning({**PAPER, "device": "cpu"}, "wrn_28_2", 1, local=False, gpu=True)
    digits = {"device": "cpu", "steps": 1000, "batch_size": 16, "uratio": 4, "threads": 1}
    assert device_warning(digits, "small_cnn", 54, local=True, gpu=False) is None


def test_a_study_that_asks_for_a_gpu_this_machine_lacks_is_told_so():
    warning = device_warning({**PAPER, "device": "cuda"}, "wrn_28_2", 3, local=True, gpu=False,
                             device_source="configs/gpu-smoke.yaml")
    assert "3 training job(s) ask for a GPU (train.device 'cuda', set in configs/gpu-smoke.yaml)" \
        in warning and "this machine shows none" in warning
    assert device_warning({**PAPER, "device": "cuda"}, "wrn_28_2", 3, local=False, gpu=False) \
        is None   # SLURM's GPU nodes


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
