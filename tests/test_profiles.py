"""Snakemake profiles: profiles/slurm plans every job with its SLURM resources (a dry-run submits
nothing and needs neither the cluster nor the datasets), and profiles/default limits the training
jobs to one per visible GPU.

Importing Snakemake takes seconds, so one subprocess runs every Snakemake call of this file in
turn (each from the same temporary working directory, as `snakemake` would from the shell)."""
import json
import os
import re
import subprocess
import sys

import pytest

from pipeline.config import ROOT

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

SNAKEFILE = ["--snakefile", str(ROOT / "Snakefile")]
SLURM = [*SNAKEFILE, "--profile", str(ROOT / "profiles/slurm"), "--dry-run"]
DASH_CIFAR10 = ["--configfile", str(ROOT / "configs/dash-cifar10.yaml")]
CLUSTER_ENV = {"SBATCH_ACCOUNT": "ssl-test", "SBATCH_PARTITION": "cpu-queue",
               "SSL_REPRO_GPU_PARTITION": "gpu-queue", "CUDA_VISIBLE_DEVICES": ""}

# Runs each call in one Python process: `dry_run` calls through Snakemake's command line,
# `parse` only reads the command line and the profiles and returns the global resource limits.
RUNNER = r"""
import contextlib, io, json, os, sys
from snakemake.cli import main, parse_args

calls, results = json.loads(sys.argv[1]), []
for call in calls:
    os.environ.update(call["env"])
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        if call["kind"] == "parse":
            _, args = parse_args(call["argv"])
            results.append({name: resource.value for name, resource in args.resources.items()})
            continue
        try:
            main(call["argv"])
            returncode = 0
        except SystemExit as exit:
            returncode = exit.code
    results.append({"returncode": returncode, "output": output.getvalue()})
with open(sys.argv[2], "w") as handle:
    json.dump(results, handle)
"""

CALLS = {
    "slurm": ("dry_run", SLURM, CLUSTER_ENV),
    "slurm dash-cifar10": ("dry_run", [*SLURM, *DASH_CIFAR10], CLUSTER_ENV),
    "default": ("dry_run", [*SNAKEFILE, "--cores", "2", "--dry-run"], {}),
    "two gpus": ("parse", [*SNAKEFILE, "--cores", "2"], {"CUDA_VISIBLE_DEVICES": "0,1"}),
    "no gpu": ("parse", [*SNAKEFILE, "--cores", "2"], {"CUDA_VISIBLE_DEVICES": ""}),
    "gpu=3 given": ("parse", [*SNAKEFILE, "--cores", "2", "--resources", "gpu=3"],
                    {"CUDA_VISIBLE_DEVICES": "0,1"}),
}


@pytest.fixture(scope="module")
def snakemake(tmp_path_factory) -> dict:
    """Every call's result by name; SLURM's commands are stubs that leave a trace if called."""
    workdir = tmp_path_factory.mktemp("profiles")
    stubs = workdir / "bin"
    stubs.mkdir()
    for command in ("sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sacctmgr",
                    "sshare"):
        stub = stubs / command
        stub.write_text(f"#!/bin/sh\ntouch {workdir}/called-{command}\nexit 1\n")
        stub.chmod(0o755)
    calls = [{"kind": kind, "argv": argv, "env": env} for kind, argv, env in CALLS.values()]
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    results_path = workdir / "results.json"
    subprocess.run([sys.executable, "-c", RUNNER, json.dumps(calls), str(results_path)],
                   cwd=workdir, env=env, check=True, timeout=300)
    results = dict(zip(CALLS, json.loads(results_path.read_text()), strict=True))
    results["slurm commands called"] = sorted(p.name for p in workdir.glob("called-*"))
    return results


def jobs(output: str, rule: str) -> list[dict]:
    """The resources of every planned job of `rule`, as printed by a dry-run."""
    planned = []
    for match in re.finditer(rf"^(?:local)?rule {rule}:\n((?:[ \t]+.*\n)*)", output, re.M):
        line = re.search(r"^\s+resources: (.*)$", match.group(1), re.M)
        pairs = [item.split("=", 1) for item in line.group(1).split(", ")] if line else []
        planned.append(dict(pairs))
    return planned


@pytest.mark.parametrize("name", ["slurm", "slurm dash-cifar10"])
def test_slurm_dry_run_plans_the_study_without_slurm_or_data(snakemake, name):
    result = snakemake[name]
    assert result["returncode"] == 0, result["output"][-3000:]
    assert "This was a dry-run" in result["output"]
    assert jobs(result["output"], "download") and jobs(result["output"], "train")
    # Submitting, cancelling or polling would call these; the plugin's help text may still ask
    # `scontrol show config` for a default (and copes with it failing).
    called = set(snakemake["slurm commands called"])
    assert not called & {"called-sbatch", "called-squeue", "called-sacct", "called-scancel"}


def test_slurm_training_jobs_ask_for_a_gpu_in_the_gpu_partition(snakemake):
    train = jobs(snakemake["slurm dash-cifar10"]["output"], "train")
    assert len(train) == 3 * 7 * 3
    for resources in train:
        assert resources["gpu"] == "1" and resources["cpus_per_task"] == "4"
        assert resources["slurm_partition"] == "gpu-queue"
        assert resources["slurm_account"] == "ssl-test"
        assert int(resources["runtime"]) >= 24 * 60 and int(resources["mem_mb"]) >= 16000


def test_slurm_small_jobs_run_in_the_default_partition_for_minutes(snakemake):
    output = snakemake["slurm dash-cifar10"]["output"]
    for rule in ("download", "split", "evaluate", "tables", "figures"):
        for resources in jobs(output, rule):
            assert resources["slurm_partition"] == "cpu-queue", rule
            assert "gpu" not in resources and int(resources["runtime"]) <= 120, rule


def test_default_profile_is_used_by_a_plain_run(snakemake):
    result = snakemake["default"]
    assert result["returncode"] == 0, result["output"][-3000:]
    assert f"workflow specific profile {ROOT / 'profiles/default'}" in result["output"]


def test_default_profile_allows_one_training_job_per_visible_gpu(snakemake):
    assert snakemake["two gpus"]["gpu"] == 2


def test_default_profile_sets_no_gpu_limit_without_a_gpu(snakemake):
    assert "gpu" not in snakemake["no gpu"]


def test_resources_on_the_command_line_override_the_gpu_count(snakemake):
    assert snakemake["gpu=3 given"]["gpu"] == 3
