"""Warm starts (pipeline/runs/forkserver.py): a job forked from the fork server behaves as the
same job in its own process (streams, working folder, environment, exit status, signals, death
of its client) and writes the same bytes; the server ends with its Snakemake process. The
SIGKILL tests of test_resume.py also run their jobs warm: Snakemake starts the server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.config import ROOT, deep_merge, load_params, load_study
from pipeline.runs.forkserver import socket_path

JOB_MODULE = textwrap.dedent('''\
    import os, sys, time

    def main(argv):
        print(f"job pid {os.getpid()} cwd {os.getcwd()} marker {os.environ.get('WARM_MARKER')} "
              f"torch {'torch' in sys.modules} pipeline.config {'pipeline.config' in sys.modules}",
              flush=True)
        if argv[0] == "exit":
            sys.exit(int(argv[1]))
        if argv[0] == "raise":
            raise RuntimeError("the job's own error")
        if argv[0] == "sleep":
            time.sleep(120)
''')
CLIENT = ("import sys; from pipeline.runs.forkserver import run_warm; "
          "code = run_warm('warmjob', sys.argv[2:], sys.argv[1]); "
          "sys.exit(100 if code is None else code)")   # 100: not run warm


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by its parent) counts as ended
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A native-numerics server for a folder with a test job module, owned by a `sleep`."""
    workdir = tmp_path_factory.mktemp("warm")
    (workdir / "warmjob.py").write_text(JOB_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)])}
    env.pop(FLAVOUR_SWITCH, None)
    owner = subprocess.Popen(["sleep", "600"])
    started = subprocess.run([sys.executable, "-m", "pipeline.runs.forkserver_daemon", "start", "--owner",
                              str(owner.pid), "--flavour", "native"], cwd=workdir, env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    path = socket_path("native", str(workdir))
    assert path.exists(), (workdir / "logs/forkserver.log").read_text()
    yield workdir, env, owner
    owner.kill()
    owner.wait()


FLAVOUR_SWITCH = "SSL_REPRO_FORKSERVER"


def client(server, *args: str, flavour: str = "native", extra_env: dict | None = None):
    workdir, env, _ = server
    return subprocess.Popen([sys.executable, "-c", CLIENT, flavour, *args], cwd=workdir,
                            env={**env, "WARM_MARKER": "from-the-client", **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_pid(process: subprocess.Popen) -> int:
    line = process.stdout.readline()
    assert line.startswith("job pid "), line + process.stderr.read()
    return int(line.split()[2])


def test_a_warm_job_has_the_clients_streams_folder_environment_and_exit_status(server):
    process = client(server, "exit", "3")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    words = stdout.split()
    assert int(words[2]) != process.pid   # forked from the server, not the client itself
    assert words[4] == str(server[0]) and words[6] == "from-the-client"
    # torch came imported; this project's modules are imported afresh, from disk
    assert words[8] == "True" and words[10] == "False"
    log = (server[0] / "logs/forkserver.log").read_text()
    assert f"job {words[2]}: warmjob exit 3" in log and f"job {words[2]}: exit 3" in log


def test_a_warm_jobs_error_is_its_clients_traceback_and_exit_1(server):
    process = client(server, "raise")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "RuntimeError: the job's own error" in stderr and "Traceback" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_or_killing_the_client_stops_the_job(server, signum):
    process = client(server, "sleep")
    pid = job_pid(process)
    assert alive(pid)
    process.send_signal(signum)
    process.wait(timeout=30)
    # SIGTERM is forwarded and the client dies of it as the job does; after a SIGKILL, which
    # nothing can forward, the job's supervisor sees the client gone and kills the job
    assert process.returncode == -signum
    assert wait_for(lambda: not alive(pid), 10), f"job {pid} outlived its client"


def test_a_job_whose_import_time_environment_differs_runs_in_its_own_process(server):
    process = client(server, "exit", "0", extra_env={"TORCH_SOMETHING": "1"})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 100   # run_warm declined: the caller runs the job itself
    assert "warm start declined" in stderr and "TORCH_SOMETHING ('1' against None)" in stderr
    process = client(server, "exit", "0", flavour="portable")   # no portable server here
    assert process.wait(timeout=60) == 100


def test_the_server_stops_with_its_snakemake_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(FLAVOUR_SWITCH, None)
    owner = subprocess.Popen(["sleep", "600"])
    subprocess.run([sys.executable, "-m", "pipeline.runs.forkserver_daemon", "start", "--owner",
                    str(owner.pid), "--flavour", "native"], cwd=tmp_path, env=env, check=True,
                   timeout=120)
    path = socket_path("native", str(tmp_path))
    assert path.exists()
    owner.kill()
    owner.wait()
    assert wait_for(lambda: not path.exists(), 10)
    assert "stopping (" in (tmp_path / "logs/forkserver.log").read_text()


# ---- a real training job, warm and cold: the same bytes --------------------------------------
STUDY = {"study": {"name": "warm", "n_labels": [10], "seeds": [0], "algorithms": ["fixmatch"]},
         "models": {"small_cnn": {"width": 4}},
         "train": {"steps": 12, "batch_size": 4, "uratio": 2, "eval_every": 6, "log_every": 2,
                   "checkpoint_every": 6, "last_k": 2, "portable_numerics": True}}


def test_a_warm_training_job_writes_what_a_cold_one_writes(tmp_path):
    from pipeline.data import download, split

    study = load_study(deep_merge(load_params(ROOT / "params.yaml"), STUDY))
    run = study.run_config("digits", 10, "fixmatch", 0)
    manifest, split_path = Path(study.manifest_path("digits")), Path(study.split_path("digits",
                                                                                      10, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    env.pop(FLAVOUR_SWITCH, None)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        download.main(["--dataset", "digits", "--options", json.dumps(run.dataset_options),
                       "--manifest", str(manifest)])
        split.main(["--manifest", str(manifest), "--n-labels", "10", "--seed", "0",
                    "--out", str(split_path)])
    finally:
        os.chdir(old)
    (tmp_path / "run.json").write_text(run.to_json())
    owner = subprocess.Popen(["sleep", "600"])
    try:
        subprocess.run([sys.executable, "-m", "pipeline.runs.forkserver_daemon", "start", "--owner",
                        str(owner.pid), "--flavour", "portable"], cwd=tmp_path, env=env,
                       check=True, timeout=120)
        outputs = {}
        for mode in ("cold", "warm"):
            command = [sys.executable, "-m", "pipeline.runs.train", "--run-config", "run.json",
                       "--manifest", str(manifest), "--split", str(split_path), "--out", mode,
                       "--checkpoint-dir", f"checkpoints-{mode}", "--threads", "1",
                       "--code-digest", "d" * 64]
            done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=300, env={**env, FLAVOUR_SWITCH: "0"}
                                  if mode == "cold" else env)
            assert done.returncode == 0, done.stderr
            assert "done; ema/best_error" in done.stdout
            outputs[mode] = {name: (tmp_path / mode / name).read_bytes() for name in
                             ("metrics.json", "evaluations.csv", "train_stats.csv")}
    finally:
        owner.kill()
        owner.wait()
    log = (tmp_path / "logs/forkserver.log").read_text()
    assert log.count("pipeline.runs.train --run-config run.json") == 1   # the warm one only
    assert outputs["warm"] == outputs["cold"]
    records = {mode: json.loads((tmp_path / mode / "run.json").read_text())
               for mode in ("cold", "warm")}
    assert records["warm"]["start"] == "warm" and records["cold"]["start"] == "cold"
    # the job process's own CPU time and memory (a forked job's includes the imported modules)
    assert records["warm"]["cpu_seconds"] > 0 and records["warm"]["max_rss_mb"] > 50
    assert records["cold"]["cpu_seconds"] > records["warm"]["cpu_seconds"]   # the imports
