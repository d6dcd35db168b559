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
import yaml

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

calls, results, base = json.loads(sys.argv[1]), [], dict(os.environ)
for call in calls:
    os.environ.clear()   # each call its own environment: nothing leaks into the next one
    os.environ.update({**base, **call["env"]})
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        if call["kind"] == "parse":
            _, args = parse_args(call["argv"])
            results.append({name: resource.value for name, resource in args.resources.items()})
            continue
        if call["kind"] == "settings":   # the SLURM executor's settings the profile chose
            _, args = parse_args(call["argv"])
            chosen = {key: getattr(args, key, None) for key in
                      ("slurm_status_command", "slurm_no_account")}
            results.append({key: value if isinstance(value, (str, bool)) else None
                            for key, value in chosen.items()})   # unset: a dataclass MISSING
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

# A small CPU-only cluster without accounting, as sinfo and scontrol describe it (tests/test_slurm.py
# runs a real one): 2 CPUs and 3000 MB per node, a 60-minute partition.
FAKE_CLUSTER = {
    "sinfo": 'case "$*" in *%P*) echo "debug* 2 3000 (null)";; *) echo "1:00:00";; esac',
    "scontrol": 'echo "AccountingStorageType   = accounting_storage/none"',
}
SMALL_CLUSTER_ENV = {"CUDA_VISIBLE_DEVICES": "", "PATH": "FAKE_CLUSTER"}

CALLS = {
    "slurm": ("dry_run", SLURM, CLUSTER_ENV),
    "small cluster": ("dry_run", [*SLURM, *DASH_CIFAR10], SMALL_CLUSTER_ENV),
    "small cluster, 8 CPUs asked": ("dry_run", [*SLURM, *DASH_CIFAR10],
                                    {**SMALL_CLUSTER_ENV, "SSL_REPRO_TRAIN_CPUS": "8"}),
    "small cluster settings": ("settings", [*SLURM], SMALL_CLUSTER_ENV),
    "accounting settings": ("settings", [*SLURM], {"PATH": "FAKE_ACCOUNTING"}),
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
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    paths = {"FAKE_ACCOUNTING": {**FAKE_CLUSTER, "scontrol": 'echo "AccountingStorageType = '
                                 'accounting_storage/slurmdbd"'}, "FAKE_CLUSTER": FAKE_CLUSTER}
    for name, commands in paths.items():
        folder = workdir / name.lower()
        folder.mkdir()
        for command, script in commands.items():
            (folder / command).write_text(f"#!/bin/sh\n{script}\n")
            (folder / command).chmod(0o755)
        paths[name] = f"{folder}{os.pathsep}{env['PATH']}"
    calls = [{"kind": kind, "argv": argv,
              "env": {**env_, **({"PATH": paths[env_["PATH"]]} if "PATH" in env_ else {})}}
             for kind, argv, env_ in CALLS.values()]
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
    output = snakemake["slurm dash-cifar10"]["output"]
    train = jobs(output, "train")
    study = yaml.safe_load((ROOT / "configs/dash-cifar10.yaml").read_text())["study"]
    assert len(train) == len(study["n_labels"]) * len(study["algorithms"]) * len(study["seeds"])
    assert threads(output, "train") == {4}   # the study's train.threads: its CPUs on SLURM
    for resources in train:
        assert resources["gpu"] == "1" and "cpus_per_task" not in resources
        assert resources["slurm_partition"] == "gpu-queue"
        assert resources["slurm_account"] == "ssl-test"
        assert int(resources["runtime"]) >= 24 * 60 and int(resources["mem_mb"]) >= 16000


def threads(output: str, rule: str) -> set[int]:
    """The thread counts of the planned jobs of `rule` (the --cpus-per-task SLURM gets)."""
    return {int(match.group(1)) for match in re.finditer(
        rf"^(?:local)?rule {rule}:\n(?:[ \t]+.*\n)*?[ \t]+threads: (\d+)", output, re.M)}


def test_on_a_small_cpu_only_cluster_training_jobs_fit_its_limits_and_ask_no_gpu(snakemake):
    result = snakemake["small cluster"]
    assert result["returncode"] == 0, result["output"][-3000:]
    for resources in jobs(result["output"], "train"):
        assert resources["gpu"] == "0"   # device auto: trains on the CPU it gets
        assert resources["runtime"] == "60" and resources["mem_mb"] == "3000"   # capped
    assert "training jobs ask 60 minutes (the cluster's limit), not 2880" in result["output"]
    assert threads(result["output"], "train") == {2}   # the study's 4, capped at the node's 2


def test_cpus_asked_for_are_the_jobs_threads_capped_at_the_largest_node(snakemake):
    assert threads(snakemake["small cluster, 8 CPUs asked"]["output"], "train") == {2}


def test_without_accounting_job_states_come_from_squeue_and_no_account_is_asked(snakemake):
    assert snakemake["small cluster settings"] == {"slurm_status_command": "squeue",
                                                   "slurm_no_account": True}
    assert snakemake["accounting settings"]["slurm_status_command"] != "squeue"


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
