"""pipeline.runs.tracking.RunLogger against the real MLflow SQLite store: a restarted job continues
its run, and the steps it repeats after resuming from a checkpoint are logged once."""
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import RunConfig
from pipeline.errors import UserError
from pipeline.runs import tracking
from pipeline.runs.tracking import RunLogger
from pipeline.runs.tracking_store import (check_sqlite_location, client, file_system, store_error,
                                          store_identity, waiting)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def history(logger: RunLogger, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in logger.tracking.get_metric_history(logger.run_id, key)]


def test_resumed_run_logs_each_step_once_per_key(store: Path):
    id_file = store / "checkpoints" / "mlflow_run.json"
    first = RunLogger("exp", "run", id_file, {"seed": 0}, {"lr": 0.03})
    for step in range(1, 11):
        first.log_metrics(step, {"train/loss": float(step)})
        if step % 4 == 0:
            first.log_metrics(step, {"ema/error": 100.0 - step})
    first.log_metrics(11, {"train/loss": 11.0})   # killed before step 12's ema/error was logged
    # killed here; the checkpoint was at step 6: the restarted job repeats steps 7..12
    second = RunLogger("exp", "run", id_file, {"seed": 0}, {"lr": 0.03})
    assert second.run_id == first.run_id and second.resumed
    for step in range(7, 14):
        second.log_metrics(step, {"train/loss": float(step)})
        if step % 4 == 0:
            second.log_metrics(step, {"ema/error": 100.0 - step})
    second.finish()
    assert history(second, "train/loss") == [(s, float(s)) for s in range(1, 14)]
    assert history(second, "ema/error") == [(4, 96.0), (8, 92.0), (12, 88.0)]


def test_a_new_run_logs_everything(store: Path):
    logger = RunLogger("exp", "run", store / "id.txt", {}, {})
    assert not logger.resumed
    logger.log_metrics(0, {"a": 1.0})
    logger.log_metrics(0, {"a": 2.0})   # not resumed: nothing is filtered
    assert sorted(history(logger, "a")) == [(0, 1.0), (0, 2.0)]


def test_a_resumed_run_gets_its_params_again_and_the_tags_of_where_it_ran_now(store: Path):
    id_file = store / "id.txt"
    first = RunLogger("exp", "run", id_file, {"execution.threads": 1}, {"lr": 0.03})
    second = RunLogger("exp", "run", id_file, {"execution.threads": 4}, {"lr": 0.03})
    run = second.tracking.get_run(second.run_id)
    assert second.run_id == first.run_id
    assert run.data.params == {"lr": "0.03"}
    assert run.data.tags["execution.threads"] == "4" and run.data.tags["resumed"] == "true"


def test_a_run_from_uncommitted_code_keeps_the_diff(store: Path, monkeypatch):
    from pipeline.config import default_params, load_study
    from pipeline.runs import train

    monkeypatch.setattr(train, "git_diff", lambda: "diff --git a/x.py b/x.py\n+changed\n")
    run = load_study(default_params()).run_config("digits", 10, "fixmatch", 0)
    provenance = {"config_hash": run.config_hash, "code_digest": "d", "split_sha256": "s",
                  "dataset_digest": "x", "git_commit": "abc-dirty"}
    split = store / "split.json"
    split.write_text("{}")
    logger = train.open_run(run, provenance, "cpu", store / "checkpoints", split, "name")
    artifact = logger.tracking.download_artifacts(logger.run_id, "git_diff.patch", str(store))
    assert Path(artifact).read_text() == "diff --git a/x.py b/x.py\n+changed\n"
    params = logger.tracking.get_run(logger.run_id).data.params
    # the fully resolved config: dataset options, every hyperparameter, the resolved flip
    assert params["dataset.test_size"] == "497" and params["fixmatch.tau"] == "0.95"
    assert params["model.bn_momentum"] == "0.01" and params["train.horizontal_flip"] == "False"


CELL = {"study": "s", "dataset": "digits", "n_labels": 10, "algorithm": "fixmatch", "seed": 0}


def test_a_newer_finished_run_of_a_cell_supersedes_the_older_ones_only(store: Path):
    old = RunLogger("exp", "old", store / "a.txt", {**CELL, "config_hash": "1"}, {})
    old.finish()
    other_seed = RunLogger("exp", "seed1", store / "b.txt", {**CELL, "seed": 1}, {})
    other_seed.finish()
    new = RunLogger("exp", "new", store / "c.txt", {**CELL, "config_hash": "2"}, {})
    new.finish()
    run = RunConfig(**CELL, dataset_options={}, algorithm_params={}, model="small_cnn",
                    model_options={}, train={}, config_hash="2")
    assert new.supersede_earlier_runs(run) == [old.run_id]
    tags = lambda logger: new.tracking.get_run(logger.run_id).data.tags
    assert tags(old)["superseded_by"] == new.run_id
    assert "superseded_by" not in tags(other_seed) and "superseded_by" not in tags(new)


def test_a_variants_run_supersedes_only_the_runs_of_its_own_row(store: Path):
    """FixMatch (CTA) (the variant fixmatch_cta of fixmatch) and FixMatch share every CELL_TAGS
    value, algorithm included: the variant tag keeps each row's runs apart."""
    plain = RunLogger("exp", "plain", store / "a.txt", {**CELL, "config_hash": "1"}, {})
    plain.finish()
    old_variant = RunLogger("exp", "cta", store / "b.txt",
                            {**CELL, "variant": "fixmatch_cta", "config_hash": "2"}, {})
    old_variant.finish()
    new = RunLogger("exp", "cta2", store / "c.txt",
                    {**CELL, "variant": "fixmatch_cta", "config_hash": "3"}, {})
    new.finish()
    run = RunConfig(**CELL, dataset_options={}, algorithm_params={}, model="small_cnn",
                    model_options={}, train={}, config_hash="3", variant="fixmatch_cta")
    assert new.supersede_earlier_runs(run) == [old_variant.run_id]
    newer_plain = RunLogger("exp", "plain2", store / "d.txt", {**CELL, "config_hash": "4"}, {})
    newer_plain.finish()
    plain_run = RunConfig(**CELL, dataset_options={}, algorithm_params={}, model="small_cnn",
                          model_options={}, train={}, config_hash="4")
    assert newer_plain.supersede_earlier_runs(plain_run) == [plain.run_id]
    assert "superseded_by" not in new.tracking.get_run(new.run_id).data.tags


def test_the_experiment_opens_as_a_model_training_one(store: Path):
    logger = RunLogger("exp", "run", store / "id.txt", {}, {})
    experiment = logger.tracking.get_experiment(logger.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_split_is_the_runs_input_dataset_with_its_digest(store: Path):
    logger = RunLogger("exp", "run", store / "id.txt", {}, {})
    logger.log_input("digits-10-split0", "ab" * 32, "/data/splits/seed0.json")
    (dataset_input,) = logger.tracking.get_run(logger.run_id).inputs.dataset_inputs
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("digits-10-split0",
                                                                          ("ab" * 32)[:36])
    assert "/data/splits/seed0.json" in dataset_input.dataset.source


# ---- run creation is one idempotent step (issue 19, #3) ------------------------------------------
def runs_of(logger: RunLogger) -> list:
    return logger.tracking.search_runs([logger.experiment_id])


def test_a_job_killed_between_creating_its_run_and_recording_it_finds_that_run_again(
        store: Path):
    record = store / "mlflow_run.json"
    first = RunLogger("exp", "run", record, {"seed": 0}, {"lr": 0.03})
    # What a kill right after create_run leaves: the record holds the attempt, not the run id.
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in saved.items() if k != "run_id"}))
    second = RunLogger("exp", "run", record, {"seed": 0}, {"lr": 0.03})
    assert second.run_id == first.run_id and [r.info.run_id for r in runs_of(second)] == [
        first.run_id]   # no orphan RUNNING run beside a new one
    assert json.loads(record.read_text())["run_id"] == first.run_id


def test_a_run_created_without_its_params_gets_them_on_the_rerun(store: Path):
    from mlflow.tracking import MlflowClient

    record = store / "mlflow_run.json"
    probe = RunLogger("exp", "probe", store / "probe.json", {}, {})
    # killed after create_run (tags are part of it), before params were logged or the id recorded
    tracking = MlflowClient(probe.uri)
    orphan = tracking.create_run(probe.experiment_id, tags={"ssl_repro_attempt": "a1"})
    record.write_text(json.dumps({"tracking_uri": store_identity(probe.uri), "attempt": "a1"}))
    logger = RunLogger("exp", "run", record, {"seed": 0}, {"lr": 0.03})
    assert logger.run_id == orphan.info.run_id
    run = tracking.get_run(logger.run_id)
    assert run.data.params == {"lr": "0.03"} and run.data.tags["seed"] == "0"


def test_a_job_killed_before_creating_its_run_creates_one_run(store: Path):
    record = store / "mlflow_run.json"
    probe = RunLogger("exp", "probe", store / "probe.json", {}, {})
    record.write_text(json.dumps({"tracking_uri": store_identity(probe.uri), "attempt": "a2"}))
    logger = RunLogger("exp", "run", record, {}, {})
    assert not logger.resumed and len(runs_of(logger)) == 2   # the probe's and this one


def test_a_store_switched_between_a_kill_and_the_rerun_is_an_error_naming_both(
        store: Path, monkeypatch, capsys):
    record = store / "mlflow_run.json"
    first = RunLogger("exp", "run", record, {}, {})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/other.db")
    with pytest.raises(UserError) as error:
        RunLogger("exp", "run", record, {}, {})
    message = str(error.value)
    assert first.run_id in message and f"{store}/mlflow.db" in message
    assert f"{store}/other.db" in message and f"delete {record}" in message
    record.unlink()   # the fix it names: a new run in the new store
    assert RunLogger("exp", "run", record, {}, {}).uri.endswith("other.db")


def test_a_store_that_lost_the_run_is_an_error_not_a_silent_new_run(store: Path):
    record = store / "mlflow_run.json"
    first = RunLogger("exp", "run", record, {}, {})
    (store / "mlflow.db").unlink()   # reset: a new, empty store in its place
    client()
    reconnect(first)   # as the next job's fresh process does
    with pytest.raises(UserError, match="does not hold"):
        RunLogger("exp", "run", record, {}, {})


# ---- a store that fails mid-run -----------------------------------------------------------------
def test_values_a_failing_store_did_not_take_are_logged_by_sync_once(store: Path, monkeypatch):
    """The store goes away (its file moved aside: every write fails) and comes back."""
    record = store / "mlflow_run.json"
    logger = RunLogger("exp", "run", record, {}, {})
    monkeypatch.setattr("pipeline.runs.tracking.RETRY_EVERY", 0.0)
    rows = [{"step": float(s), "train/loss": float(s)} for s in range(1, 7)]
    logger.log_metrics(1, {"train/loss": 1.0})
    outage(store, logger)
    for row in rows[1:4]:
        logger.log_metrics(int(row["step"]), {"train/loss": row["train/loss"]})
    assert logger.failed_writes and logger._failure[0] == 2
    restore(store, logger)
    for row in rows[4:]:
        logger.log_metrics(int(row["step"]), {"train/loss": row["train/loss"]})
    logger.sync(rows, resumed_from=0)
    assert sorted(history(logger, "train/loss")) == [(s, float(s)) for s in range(1, 7)]


def test_a_store_that_stays_away_stops_the_job_with_one_paragraph(store: Path, monkeypatch):
    monkeypatch.setenv("SSL_REPRO_TRACKING_WAIT", "0")
    logger = RunLogger("exp", "run", store / "mlflow_run.json", {}, {})
    logger.log_metrics(1, {"train/loss": 1.0})
    outage(store, logger)
    logger.log_metrics(2, {"train/loss": 2.0})
    with pytest.raises(UserError) as error:
        logger.sync([], resumed_from=0, checkpoint=store / "checkpoint.pt")
    message = str(error.value)
    assert "since step 2" in message and f"checkpoint {store}/checkpoint.pt is kept" in message
    assert logger.run_id in message and "rerun snakemake" in message


def answers(*outcomes):
    """A store call that fails with, or returns, each of `outcomes` in turn."""
    outcomes = list(outcomes)

    def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    return call


def test_a_server_that_restarts_is_waited_for_and_a_refusal_is_not(monkeypatch, capsys):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE

    monkeypatch.setattr("pipeline.runs.tracking_store.WAIT_POLL", 0.01)
    database_away = MlflowException("too many 503 error responses",
                                    error_code=TEMPORARILY_UNAVAILABLE)
    server_away = ConnectionRefusedError("Connection refused")
    uri = "http://mlflow-host:5000"
    assert waiting(uri, 60, answers(database_away, server_away, "run"), "open") == "run"
    assert capsys.readouterr().err.count("waiting up to 60 s (SSL_REPRO_TRACKING_WAIT)") == 1
    with pytest.raises(UserError, match=r"cannot open the MLflow tracking server .* 503"):
        waiting(uri, 0.05, answers(*[database_away] * 100), "open")   # away for good
    capsys.readouterr()
    refused = MlflowException("Invalid Host header - possible DNS rebinding attack detected",
                              error_code=PERMISSION_DENIED)
    with pytest.raises(UserError, match="start it with `--allowed-hosts mlflow-host:5000`"):
        waiting(uri, 60, answers(refused, "run"), "open")   # at once: no waiting for a 403
    locked = sqlite3.OperationalError("database is locked")
    with pytest.raises(UserError, match="stayed locked"):   # SQLite's own retry is elsewhere
        waiting("sqlite:///mlflow.db", 60, answers(locked, "run"), "open")
    assert "waiting" not in capsys.readouterr().err


def reconnect(logger: RunLogger) -> None:
    """Close this process's pooled connections to the store (MLflow keeps one store object per
    URI for the life of a process): the next request opens the file by its name again."""
    logger.tracking._tracking_client.store.engine.dispose()


def outage(store: Path, logger: RunLogger) -> None:
    """The SQLite file goes away and a directory takes its place: the store cannot be opened."""
    reconnect(logger)
    (store / "mlflow.db").rename(store / "away.db")
    (store / "mlflow.db").mkdir()


def restore(store: Path, logger: RunLogger) -> None:
    (store / "mlflow.db").rmdir()
    (store / "away.db").rename(store / "mlflow.db")


# ---- opening the store: atomic creation, what each failure says ---------------------------------
def test_a_kill_while_the_store_is_created_leaves_no_store_and_the_rerun_builds_it(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    init = [sys.executable, "-m", "pipeline.runs.tracking", "init", "--experiment", "x"]
    process = subprocess.Popen(init, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".mlflow.db.*.tmp")) and time.monotonic() < deadline:
        assert process.poll() is None, "init ended before the kill"
        time.sleep(0.002)
    time.sleep(0.02)   # into MLflow's migrations (they take a few hundred ms)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "mlflow.db").exists()   # a temporary file at most, never a store
    rerun = subprocess.run(init, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    # the killed attempt's temporary file is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db-schema.lock"]


def test_a_half_built_store_says_so_and_what_to_do(store: Path):
    RunLogger("exp", "run", store / "id.json", {}, {})
    # What a migration cut short leaves (before this project built stores atomically, or another
    # tool made it): some later tables missing, no schema version.
    with contextlib.closing(sqlite3.connect(store / "mlflow.db")) as db:
        db.execute("drop table webhooks")
        db.execute("drop table alembic_version")
        db.commit()
    init = subprocess.run([sys.executable, "-m", "pipeline.runs.tracking", "init", "--experiment",
                           "x"], cwd=store, capture_output=True, text=True)
    assert init.returncode == 2 and "Traceback" not in init.stderr
    message = " ".join(init.stderr.split("ssl-repro error: ")[-1].split())
    assert "is half-built" in message and "no schema version" in message
    assert "holds 1 runs" in message and "mlflow db upgrade" in message
    assert "start the server" not in message.lower()


def test_a_file_that_is_no_database_is_named(store: Path):
    (store / "mlflow.db").write_text("not sqlite\n" * 100)
    with pytest.raises(UserError, match="is not a SQLite database"):
        client()


def test_a_file_store_error_is_whole_with_mlflows_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserError) as error:
        client()
    assert "MLFLOW_ALLOW_FILE_STORE=true" in str(error.value)   # never cut off
    assert "start the server" not in str(error.value).lower()


def test_a_locked_store_is_called_locked(tmp_path):
    path = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(path)) as holder:
        holder.execute("create table t (x)")
        holder.execute("begin exclusive")
        with contextlib.closing(sqlite3.connect(path, timeout=0)) as other, \
                pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("select * from t")
    message = str(store_error(f"sqlite:///{path}", locked.value, "open"))
    assert "stayed locked by another process" in message and "Wait and rerun" in message
    assert "start the server" not in message.lower()


def test_a_full_disk_is_called_full():
    error = sqlite3.OperationalError("database or disk is full")
    message = str(store_error("sqlite:///mlflow.db", error, "write to"))
    assert "its disk is full" in message and "Free space there" in message


# ---- a SQLite store on a network file system: refused on a cluster, a warning on one machine ----
def mount_table(tmp_path: Path, fstype: str) -> Path:
    """A mount table, as /proc/self/mountinfo, where `tmp_path`/shared is a mount of `fstype`."""
    table = tmp_path / "mountinfo"
    table.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                     f"40 22 0:50 / {os.path.realpath(tmp_path)}/shared rw,relatime shared:9 - "
                     f"{fstype} fileserver:/export rw,vers=4.2\n"
                     "41 22 0:51 / /mnt/my\\040share rw - lustre 10.0.0.1@tcp:/fs rw\n")
    return table


def test_a_path_is_on_the_file_system_of_its_deepest_mount(tmp_path):
    table = mount_table(tmp_path, "nfs4")
    assert file_system(tmp_path / "shared" / "mlflow.db", table) == "nfs4"
    assert file_system(tmp_path / "shared", table) == "nfs4"
    assert file_system(tmp_path / "sharedx" / "mlflow.db", table) == "ext4"
    assert file_system(Path("/mnt/my share/mlflow.db"), table) == "lustre"   # \040: a space


@pytest.fixture
def on_nfs(tmp_path, monkeypatch) -> Path:
    """`tmp_path`/shared, on NFS as far as the mount table says."""
    monkeypatch.setattr("pipeline.runs.tracking_store.MOUNTINFO", mount_table(tmp_path, "nfs4"))
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/shared/mlflow.db")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return tmp_path / "shared"


def test_a_sqlite_store_on_nfs_is_refused_before_a_cluster_study_starts(on_nfs, capsys):
    with pytest.raises(SystemExit) as exit_:
        tracking.main(["init", "--experiment", "x", "--jobs-on-other-hosts"])
    message = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and "Traceback" not in message
    assert f"{on_nfs}/mlflow.db is a SQLite file on a network file system (nfs4)" in message
    assert "can corrupt it" in message and "Nothing was started" in message
    assert "`mlflow server` on PostgreSQL" in message and "profiles/README.md" in message
    assert not (on_nfs / "mlflow.db").exists()


def test_a_sqlite_store_on_nfs_is_a_warning_when_every_job_runs_on_this_machine(on_nfs, capsys):
    tracking.main(["init", "--experiment", "x"])
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("warning: the MLflow tracking store") and "(nfs4)" in err
    assert "every job runs on this machine, so it goes on" in err
    assert (on_nfs / "mlflow.db").exists()


def test_a_training_job_of_a_slurm_allocation_refuses_a_sqlite_store_on_nfs(on_nfs, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with pytest.raises(UserError, match=r"on a network file system \(nfs4\)"):
        RunLogger("exp", "run", on_nfs / "mlflow_run.json", {}, {})
    monkeypatch.delenv("SLURM_JOB_ID")
    RunLogger("exp", "run", on_nfs / "mlflow_run.json", {}, {})   # one machine: it goes on


def test_a_server_or_a_sqlite_file_on_a_local_disk_is_never_questioned(on_nfs):
    assert check_sqlite_location("http://mlflow-host:5000", other_hosts=True) is None
    assert check_sqlite_location(f"sqlite:///{on_nfs.parent}/mlflow.db", other_hosts=True) is None
