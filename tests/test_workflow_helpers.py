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
