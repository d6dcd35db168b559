"""What several test files share: a tiny finished Snakemake study (real Snakemake, MLflow and
training, in a temporary folder), made once per test session, and copies of it to damage; the
digits data set, downloaded (copied out of scikit-learn) and loaded once per test module."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT, default_params
from semisup.data import get_dataset

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]

TINY = {
    "study": {"name": "tiny", "n_labels": [10], "seeds": [0, 1],
              "algorithms": ["supervised", "fixmatch"]},
    "train": {"steps": 6, "batch_size": 8, "uratio": 2, "eval_every": 3, "log_every": 2,
              "checkpoint_every": 3, "last_k": 2},
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(the digits DatasetSpec, its loaded data) with params.yaml's options."""
    spec = get_dataset("digits")
    root = tmp_path_factory.mktemp("digits")
    options = default_params()["datasets"]["digits"]
    spec.download(root, **options)
    return spec, spec.load(root, **options)


def snakemake_command(workdir: Path, *args: str) -> tuple[list[str], dict]:
    """The command line and environment of `snakemake args` in workdir (its own MLflow store)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return [*SNAKEMAKE, *args], env


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake args` in workdir; `env`: variables to set besides this process's."""
    command, environment = snakemake_command(workdir, *args)
    return subprocess.run(command, cwd=workdir, env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def snakemake_all(calls: dict[str, tuple[Path, list[str]]]) -> dict[str, subprocess.CompletedProcess]:
    """Several `snakemake` calls at once (name -> (workdir, args)): each imports Snakemake and
    builds its DAG in seconds, which the calls share."""
    jobs = {}
    for name, (workdir, args) in calls.items():
        command, env = snakemake_command(workdir, *args)
        jobs[name] = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    results = {}
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    return results


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """The tiny study, finished: data, results, reports, MLflow runs and Snakemake's records."""
    workdir = tmp_path_factory.mktemp("study")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # as a profile's set-threads would: the job gets 2 threads while params say 1
    result = snakemake(workdir, "--cores", "2", "--configfile", "tiny.yaml",
                       "--set-threads", "train=2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.fixture
def tiny_copy(tiny_study, tmp_path) -> Path:
    """A copy of the finished tiny study (file times kept) to change without touching it."""
    return Path(shutil.copytree(tiny_study, tmp_path / "study", symlinks=True))
