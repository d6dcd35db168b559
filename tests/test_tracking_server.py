"""The CI study against an `mlflow server` on PostgreSQL with served artifacts, as a cluster runs
it (profiles/README.md): several training jobs at once, each one MLflow run that holds, read back
through the server, its params, tags, split, every value it logged once and its output files; the
metrics equal the golden file. While the jobs log: one is killed after its first checkpoint (as
the out-of-memory killer would; Snakemake's --retries starts it again and it resumes into the same
run), PostgreSQL stops as by a crash and comes back 3 s later, and the MLflow server is killed and
started again. Nothing is lost, no step is logged twice.

Needs the PostgreSQL server of tools/postgres_server.sh (`sudo tools/postgres_server.sh start`;
.ci/run starts it), and root to restart it: skipped, saying so, without them."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ROOT
from pipeline.errors import UserError
from pipeline.files import read_json
from pipeline.runs.tracking import RunLogger
from regression import CI_CONFIG, GOLDEN, check, ci_metrics_path   # tools/regression.py
from tracking_servers import (NO_POSTGRES, MlflowServer, assert_study_tracked, database,
                              postgres_url, restart_postgres, training_processes)

POSTGRES = postgres_url()
pytestmark = [pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.skipif(POSTGRES is None, reason=NO_POSTGRES),
              pytest.mark.skipif(os.geteuid() != 0, reason="restarting PostgreSQL "
                                 "(tools/postgres_server.sh restart) needs root")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server that accepts requests to 127.0.0.1:<port> only (as one started with
    `--allowed-hosts <its host>:<port>` on a cluster)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with database(POSTGRES) as backend:
        server = MlflowServer(backend, folder / "artifacts", folder / "server.log")
        server.command += ["--allowed-hosts", f"127.0.0.1:{server.port}"]
        server.start()
        yield server
        server.stop()


def kill_a_training_job_after_its_checkpoint(workdir: Path, snakemake, seen: list[int]):
    """SIGKILL the first training job whose first checkpoint appears; returns its run's
    algorithm/seed and MLflow run id. `seen` gets the number of training jobs running at each
    look."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert snakemake.poll() is None, "snakemake ended before a training job checkpointed"
        running = training_processes(workdir)
        seen.append(len(running))
        for checkpoint in (workdir / "checkpoints").rglob("checkpoint.pt"):
            run = f"{checkpoint.parts[-4]}/{checkpoint.parts[-3]}"   # algorithm/seed<k>
            if (workdir / f"results/ci/digits-10/{run}/metrics.json").exists():
                continue   # finished: its last checkpoint waits for the rule evaluate
            for pid, command in running.items():
                if f"results/ci/digits-10/{run}" in command:
                    os.kill(pid, signal.SIGKILL)
                    record = read_json(checkpoint.parent / "mlflow_run.json")
                    return run, record["run_id"]
        time.sleep(0.01)
    raise AssertionError("no training job checkpointed within 5 minutes")


def while_a_job_runs(workdir: Path, snakemake) -> int:
    """Wait until a training job runs; returns how many do."""
    deadline = time.monotonic() + 120
    while not (running := training_processes(workdir)):
        assert snakemake.poll() is None and time.monotonic() < deadline, "no training job ran"
        time.sleep(0.01)
    return len(running)


def test_the_ci_study_on_a_postgres_server_loses_nothing_to_restarts_and_a_killed_job(
        server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "SSL_REPRO_TRACKING_WAIT": "120"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--configfile", str(CI_CONFIG), "--cores", "3", "--retries", "1"]
    with open(tmp_path / "snakemake.log", "w") as log:
        snakemake = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log,
                                     stderr=subprocess.STDOUT)
    seen: list[int] = []
    killed, run_id = kill_a_training_job_after_its_checkpoint(tmp_path, snakemake, seen)
    seen.append(while_a_job_runs(tmp_path, snakemake))
    restart_postgres(down=3)
    seen.append(while_a_job_runs(tmp_path, snakemake))
    server.stop()
    downtime = server.start()
    print(f"training jobs at once: up to {max(seen)}; server away {downtime:.1f} s")
    assert snakemake.wait(timeout=600) == 0, (tmp_path / "snakemake.log").read_text()[-5000:]
    assert max(seen) >= 2   # several jobs logging at once

    check(read_json(GOLDEN), read_json(ci_metrics_path(tmp_path)),
          source="the ci study on a PostgreSQL-backed MLflow server")
    runs = assert_study_tracked(MlflowClient(server.uri), tmp_path, tmp_path / "downloaded")
    assert len(runs) == 6 and not (tmp_path / "mlruns").exists()   # artifacts went to the server
    info = read_json(tmp_path / f"results/ci/digits-10/{killed}/run.json")
    assert info["mlflow_run_id"] == run_id and info["resumed_from_step"] > 0
    attempts = (tmp_path / "logs/ci/train/attempts" /
                f"digits-10-{killed.replace('/', '-')}.log").read_text()
    assert len(re.findall(r"^==== .*attempt on ", attempts, re.M)) == 2
    logs = "".join(path.read_text() for path in (tmp_path / "logs/ci/train/attempts").iterdir())
    assert "training goes on" in logs or "waiting up to" in logs   # an outage hit a job


def test_a_server_that_refuses_the_host_name_is_named_with_the_fix(server, tmp_path,
                                                                   monkeypatch):
    uri = f"http://localhost:{server.port}"   # not among its --allowed-hosts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserError) as error:
        RunLogger("exp", "run", tmp_path / "mlflow_run.json", {}, {})
    message = str(error.value)
    assert "refuses requests made to this host name" in message
    assert f"--allowed-hosts localhost:{server.port}" in message and "403" in message
