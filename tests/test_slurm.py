"""The CI study on a real SLURM cluster through profiles/slurm (snakemake-executor-plugin-slurm):
every training job is a SLURM job, the metrics equal the golden file, and a training job
cancelled (`scancel`) mid-run is resubmitted and resumes from its checkpoint into the same MLflow
run, its log keeping both attempts. The jobs track to an `mlflow server` on PostgreSQL with served
artifacts, as on a real cluster (profiles/README.md), where tools/postgres_server.sh's server
answers (.ci/run starts it), else to a SQLite file; either way each job is one MLflow run holding
its params, tags, split, every value once and its outputs (tests/tracking_servers.py).

Needs a cluster that answers: `sudo tools/slurm_cluster.sh start` makes a one-node one on this
machine (.ci/run does), with its config in /var/tmp/ssl-repro-slurm/slurm.conf (or SLURM_CONF).
Skipped when `sinfo` gets no answer."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ROOT
from pipeline.files import read_json
from regression import GOLDEN, check, ci_metrics_path   # tools/regression.py (pyproject.toml)
from tracking_servers import MlflowServer, assert_study_tracked, database, postgres_url

CLUSTER_CONF = Path("/var/tmp/ssl-repro-slurm/slurm.conf")


def cluster_env() -> dict[str, str] | None:
    env = dict(os.environ)
    if "SLURM_CONF" not in env and CLUSTER_CONF.exists():
        env["SLURM_CONF"] = str(CLUSTER_CONF)
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return env if answer.returncode == 0 and answer.stdout.strip() else None


ENV = cluster_env()
POSTGRES = postgres_url() if ENV is not None else None
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(ENV is None, reason="no SLURM cluster answers (sinfo); start one "
                                 "with `sudo tools/slurm_cluster.sh start`")]


def cancel_a_training_job_mid_run(workdir: Path, snakemake: subprocess.Popen) -> tuple[str, str]:
    """scancel the first training job whose first checkpoint appears; returns its run's
    algorithm-seed (as in its checkpoint path) and MLflow run id."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert snakemake.poll() is None, "snakemake ended before a training job checkpointed"
        for checkpoint in (workdir / "checkpoints").rglob("checkpoint.pt"):
            algorithm, seed = checkpoint.parts[-4], checkpoint.parts[-3]
            if (workdir / f"results/ci/digits-10/{algorithm}/{seed}/metrics.json").exists():
                continue   # finished: its last checkpoint waits for the rule evaluate
            # the plugin's job comment: rule_train_wildcards_<dataset>_<n_labels>_<alg>_<seed>
            comment = f"_{algorithm}_{seed.removeprefix('seed')}"
            queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], env=ENV, capture_output=True,
                                   text=True, check=True).stdout
            job_ids = [line.split()[0] for line in queue.splitlines()
                       if line.startswith(tuple("0123456789")) and line.endswith(comment)]
            if job_ids:
                subprocess.run(["scancel", *job_ids], env=ENV, check=True)
                record = json.loads((checkpoint.parent / "mlflow_run.json").read_text())
                return f"{algorithm}-{seed}", record["run_id"]
        time.sleep(0.01)
    raise AssertionError("no training job checkpointed within 5 minutes")


@pytest.fixture
def tracking_uri(tmp_path):
    """An `mlflow server` on PostgreSQL where one answers, else a SQLite file."""
    if POSTGRES is None:
        print("no PostgreSQL server answers: the jobs track to a SQLite file")
        yield f"sqlite:///{tmp_path}/mlflow.db"
        return
    with database(POSTGRES) as backend:
        server = MlflowServer(backend, tmp_path / "artifacts", tmp_path / "server.log")
        server.start()
        try:
            yield server.uri
        finally:
            server.stop()


def test_the_ci_study_on_slurm_matches_the_golden_metrics_and_a_cancelled_job_resumes(
        tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    env = {**ENV, "MLFLOW_TRACKING_URI": tracking_uri,
           "SSL_REPRO_TRAIN_MEM_MB": "2000", "SSL_REPRO_TRAIN_RUNTIME": "10"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--profile", str(ROOT / "profiles/slurm"), "--configfile",
               str(ROOT / "configs/ci.yaml"), "--slurm-init-seconds-before-status-checks", "1",
               "--seconds-between-status-checks", "1", "--latency-wait", "5"]
    snakemake = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    cancelled, run_id = cancel_a_training_job_mid_run(tmp_path, snakemake)
    output = snakemake.communicate(timeout=600)[0]
    assert snakemake.returncode == 0, output[-5000:]

    check(read_json(GOLDEN), read_json(ci_metrics_path(tmp_path)), source="the ci study on SLURM")
    # one FINISHED run per job, with everything it logged (read through the server, if one)
    runs = assert_study_tracked(MlflowClient(tracking_uri), tmp_path, tmp_path / "downloaded")
    assert len(runs) == 6
    for run_json in (tmp_path / "results/ci").rglob("run.json"):
        info = json.loads(run_json.read_text())
        run = runs[info["mlflow_run_id"]]
        # a SLURM job, linked both ways: the MLflow tags name the job and its node
        assert info["slurm_job_id"] == run.data.tags["execution.slurm_job_id"]
        assert run.data.tags["execution.host"] == info["host"]
        algorithm, seed = run_json.parts[-3], run_json.parts[-2]
        if f"{algorithm}-{seed}" != cancelled:
            continue
        assert info["mlflow_run_id"] == run_id and info["resumed_from_step"] > 0
        log = tmp_path / f"logs/ci/train/attempts/digits-10-{algorithm}-{seed}.log"
        attempts = re.findall(r"^==== .*attempt on .*slurm_job_id (\d+)", log.read_text(), re.M)
        assert len(set(attempts)) == 2, log.read_text()[-3000:]   # both attempts, own job ids
        assert f"resumed from checkpoint at step {info['resumed_from_step']}/" in log.read_text()
