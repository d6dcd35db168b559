"""Real tracking servers for the tests: the PostgreSQL server of tools/postgres_server.sh (started
as root; .ci/run does), a database of its own per test, an `mlflow server` on it with served
artifacts; and the check that a study's MLflow runs hold everything its training jobs wrote."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from unittest import mock

from pipeline.config import ROOT
from pipeline.files import read_json

POSTGRES_DIR = Path(os.environ.get("SSL_REPRO_POSTGRES_DIR", "/var/tmp/ssl-repro-postgres"))
NO_POSTGRES = (f"no PostgreSQL server answers at the URL in {POSTGRES_DIR}/url; start one with "
               f"`sudo tools/postgres_server.sh start`")


def postgres_url() -> str | None:
    """The URL of tools/postgres_server.sh's server (a role that may create databases), if it
    answers."""
    import psycopg2

    try:
        url = (POSTGRES_DIR / "url").read_text().strip()
        psycopg2.connect(url, connect_timeout=5).close()
    except (OSError, psycopg2.Error):
        return None
    return url


@contextlib.contextmanager
def database(url: str):
    """A new, empty database on the server of `url`, dropped afterwards: yields its URL."""
    import psycopg2

    def execute(statement: str) -> None:   # a connection each: the server may have restarted
        with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as admin:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(statement)

    name = f"ssl_repro_test_{uuid.uuid4().hex[:12]}"
    execute(f"create database {name}")
    try:
        yield urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        execute(f"drop database {name} with (force)")


def restart_postgres(down: float) -> None:
    """PostgreSQL stopped as a crash does, away `down` seconds, started again (needs root)."""
    subprocess.run(["bash", str(ROOT / "tools/postgres_server.sh"), "restart", str(down)],
                   check=True, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """`mlflow server --backend-store-uri <backend> --serve-artifacts --artifacts-destination
    <artifacts>` on 127.0.0.1 and a free port, as profiles/README.md starts it on a cluster (with
    one worker: it starts faster): started, killed (SIGKILL, as a crash) and started again on the
    same port."""

    def __init__(self, backend: str, artifacts: Path, log: Path, allowed_hosts: str = ""):
        self.port, self.process = free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [str(Path(sys.executable).with_name("mlflow")), "server",
                        "--backend-store-uri", backend, "--serve-artifacts",
                        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                        "--port", str(self.port), "--workers", "1",
                        *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]
        self.log = log

    def start(self) -> float:
        """Start it; returns the seconds it took to answer."""
        started = time.monotonic()
        # Without the job runner of MLflow's GenAI features (a process more to start): tracking
        # does not use it.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return time.monotonic() - started
            except OSError:
                assert self.process.poll() is None, f"mlflow server died: {self.log.read_text()}"
                assert time.monotonic() - started < 180, "mlflow server did not answer in 3 min"
                time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)   # nothing gets to finish
        self.process.wait(timeout=60)


def training_processes(workdir: Path) -> dict[int, str]:
    """The training jobs running in `workdir` (their working folder): command line by pid. (Not
    a job's own children caught between fork and exec, which show its command line too.)"""
    found, parents = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            if b"pipeline.runs.train" in command and os.readlink(proc / "cwd") == str(workdir):
                found[int(proc.name)] = " ".join(part.decode() for part in command)
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1]
                                              .split()[1])
        except (OSError, ValueError, IndexError):   # gone, or not ours to read
            continue
    return {pid: command for pid, command in found.items() if parents.get(pid) not in found}


# ---- what MLflow holds of a study ---------------------------------------------------------------
def assert_study_tracked(tracking, workdir: Path, download: Path, study: str = "ci") -> dict:
    """Each training job of `study` in `workdir` is one FINISHED MLflow run, read through
    `tracking`, with the job's resolved config as params, its identity as tags, its split as the
    input, every value it logged once, and its output files as artifacts. Returns the runs by id."""
    from mlflow.entities import ViewType

    experiment = tracking.get_experiment_by_name(study)
    runs = {run.info.run_id: run for run in tracking.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)}
    run_files = sorted((workdir / "results" / study).rglob("run.json"))
    assert run_files and len(runs) == len(run_files), "not one MLflow run per training job"
    for run_file in run_files:
        info = read_json(run_file)
        run = runs[info["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert_params_and_tags(run, run_file.parent, info)
        assert_each_value_once(tracking, run, run_file.parent)
        assert_artifacts(tracking, run, run_file.parent, download / run.info.run_id)
    return runs


def assert_params_and_tags(run, folder: Path, info: dict) -> None:
    from pipeline.run_config import RunConfig
    from pipeline.runs.train import mlflow_params

    resolved = RunConfig.from_json(json.dumps(read_json(folder / "metrics.json")["run"]))
    assert run.data.params == {key: str(value)[:6000] for key, value in
                               mlflow_params(resolved).items()}
    tags = run.data.tags
    assert (tags["algorithm"], f"seed{tags['seed']}") == (folder.parent.name, folder.name)
    for key in ("config_hash", "code_digest", "split_sha256", "dataset_digest", "git_commit"):
        assert tags[key] == info[key], key
    [split] = run.inputs.dataset_inputs
    assert split.dataset.digest == info["split_sha256"][:36]
    assert split.dataset.name.endswith(f"split{tags['seed']}")


def csv_columns(path: Path) -> dict[str, dict[int, float]]:
    import csv

    columns: dict[str, dict[int, float]] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key != "step" and value != "":
                    columns.setdefault(key, {})[int(float(row["step"]))] = float(value)
    return columns


def assert_each_value_once(tracking, run, folder: Path) -> None:
    """Every value of train_stats.csv and evaluations.csv, and the final metrics, is in the
    run's history at its step, once; the history holds nothing else."""
    expected = {**csv_columns(folder / "train_stats.csv"),
                **csv_columns(folder / "evaluations.csv")}
    metrics = read_json(folder / "metrics.json")["metrics"]
    steps = int(read_json(folder / "metrics.json")["run"]["train"]["steps"])
    assert set(run.data.metrics) == set(expected) | {f"final/{key}" for key in metrics}
    for key in run.data.metrics:
        history = [(m.step, m.value) for m in tracking.get_metric_history(run.info.run_id, key)]
        steps_logged = [step for step, _ in history]
        assert len(steps_logged) == len(set(steps_logged)), f"{key}: a step logged twice"
        if key.startswith("final/"):
            [(step, value)] = history
            assert step == steps and math.isclose(value, metrics[key[6:]], abs_tol=1e-4), key
            continue
        assert sorted(steps_logged) == sorted(expected[key]), key
        for step, value in history:
            want = expected[key][step]
            assert value == want or (math.isnan(value) and math.isnan(want)), (key, step)


def assert_artifacts(tracking, run, folder: Path, download: Path) -> None:
    """The job's output files, downloaded through the server, equal the files it wrote."""
    names = {artifact.path for artifact in tracking.list_artifacts(run.info.run_id)}
    outputs = {"metrics.json", "evaluations.csv", "train_stats.csv"}
    assert outputs <= names <= outputs | {"git_diff.patch"}, names
    download.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        for name in outputs:
            local = tracking.download_artifacts(run.info.run_id, name, str(download))
            assert Path(local).read_bytes() == (folder / name).read_bytes(), name
