"""MLflow tracking: one MLflow run per training job, resumed under the same run id.

The tracking URI is `sqlite:///mlflow.db` in the working directory unless MLFLOW_TRACKING_URI
is set (e.g. an `mlflow server` on a cluster). The schema is created once, before jobs fan out
(`python -m pipeline.tracking init`, called from the Snakefile's onstart), and jobs started
otherwise take turns opening a SQLite store (a file lock), so that they never race to migrate
it. Writes retry with backoff when SQLite is busy. An HTTP server that does not answer is
reported within seconds.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable

from .errors import UserError, argument_parser, cli
from .files import write_text

DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow 3 opens an experiment without this tag on its (empty) GenAI traces page; with it, on
# the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The tags that name a table cell's run: a newer finished run of the same cell supersedes older ones.
CELL_TAGS = ("study", "dataset", "n_labels", "algorithm", "seed")
T = TypeVar("T")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def retry(action: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run `action`, retrying on transient store errors (SQLite 'database is locked')."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # filtered below, re-raised when not transient
            transient = "locked" in str(error) or "busy" in str(error).lower()
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2 ** attempt, 3.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def check_server_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds when an HTTP tracking server does not answer: MLflow's own client
    retries a refused connection for minutes before giving up."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return   # it answered (e.g. 401 behind authentication): reachable
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot reach the MLflow tracking server {uri!r} (MLFLOW_TRACKING_URI): {reason}. "
            f"Start the server or fix MLFLOW_TRACKING_URI; unset it to use the default "
            f"{DEFAULT_URI} in the working directory") from error


@contextmanager
def sqlite_schema_lock(uri: str):
    """One process at a time opens a SQLite store: the first one creates the schema, and MLflow's
    migrations fail ('table ... already exists') when several processes run them at once."""
    path = uri.removeprefix("sqlite:///").split("?")[0]
    if not uri.startswith("sqlite:///") or not path or sys.platform == "win32":
        yield
        return
    import fcntl

    lock = Path(path).with_name(Path(path).name + "-schema.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)   # released when the file closes
        yield


def client():
    """An MlflowClient on the tracking URI; an unreachable store is a user error."""
    uri = tracking_uri()
    check_server_reachable(uri)   # before importing mlflow: seconds, not minutes
    from mlflow.tracking import MlflowClient

    try:
        with sqlite_schema_lock(uri):   # opening the store creates or migrates its schema
            tracking = MlflowClient(uri)
            retry(lambda: tracking.search_experiments(max_results=1), "reach the tracking store")
    except Exception as error:  # any failure to reach the store is reported
        raise UserError(
            f"cannot reach the MLflow tracking store {uri!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). Start the server or fix MLFLOW_TRACKING_URI; "
            f"unset it to use the default {DEFAULT_URI} in the working directory") from error
    return tracking


def experiment_id(tracking, name: str) -> str:
    """The experiment's id, created (as a model-training experiment) if it does not exist."""
    experiment = retry(lambda: tracking.get_experiment_by_name(name), "read experiment")
    if experiment is None:
        try:
            return retry(lambda: tracking.create_experiment(name, tags=EXPERIMENT_KIND),
                         "create experiment")
        except Exception:  # noqa: BLE001 - whatever the store says, another job created it first
            experiment = retry(lambda: tracking.get_experiment_by_name(name), "read experiment")
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:   # made before this tag existed
            retry(lambda key=key, value=value: tracking.set_experiment_tag(
                experiment.experiment_id, key, value), "tag experiment")
    return experiment.experiment_id


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the project's git repository (suffixed -dirty with uncommitted changes)."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def git_diff(cwd: Path | None = None) -> str:
    """The uncommitted changes to tracked files (`git diff HEAD`), for a run made from them."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "diff", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        return f"git diff HEAD failed: {error}\n"


class RunLogger:
    """The MLflow run of one training job. `run_id_file` (kept beside the checkpoint) makes a
    restarted job continue the same run instead of opening a duplicate."""

    def __init__(self, experiment: str, run_name: str, run_id_file: Path, tags: dict[str, str],
                 params: dict[str, object]):
        from mlflow.entities import Param, RunTag

        self.tracking = client()
        self.experiment_id = experiment_id(self.tracking, experiment)
        self.run_id = self._existing_run(run_id_file)
        # A resumed run repeats the steps between its checkpoint and the kill; what MLflow
        # already holds of them is not logged twice (per key: the kill may fall between keys).
        self.resumed = self.run_id is not None
        self._logged_up_to: dict[str, int] = {}
        if self.run_id is None:
            run = retry(lambda: self.tracking.create_run(
                self.experiment_id, run_name=run_name,
                tags={"mlflow.runName": run_name}), "create run")
            self.run_id = run.info.run_id
            write_text(run_id_file, self.run_id + "\n")   # atomic: never an empty id file
        else:
            retry(lambda: self.tracking.update_run(self.run_id, status="RUNNING"), "reopen run")
            tags = {**tags, "resumed": "true"}
        # Logged on every start: the same params again are accepted, and each attempt's tags
        # (where it ran) replace the last one's.
        retry(lambda: self.tracking.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()]), "log params")

    def _existing_run(self, run_id_file: Path) -> str | None:
        if not run_id_file.exists():
            return None
        run_id = run_id_file.read_text().strip()
        try:
            retry(lambda: self.tracking.get_run(run_id), "read run")
        except Exception:  # noqa: BLE001 - the store was reset: start a new run, say so
            print(f"MLflow run {run_id} from {run_id_file} is not in {tracking_uri()}; "
                  f"opening a new run", file=sys.stderr)
            return None
        return run_id

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()
                 if not self.resumed or step > self._last_logged_step(key)]
        if batch:
            retry(lambda: self.tracking.log_batch(self.run_id, metrics=batch), "log metrics")

    def _last_logged_step(self, key: str) -> int:
        if key not in self._logged_up_to:
            history = retry(lambda: self.tracking.get_metric_history(self.run_id, key),
                            "read metric history")
            self._logged_up_to[key] = max((m.step for m in history), default=-1)
        return self._logged_up_to[key]

    def log_input(self, name: str, digest: str, source: str) -> None:
        """The split as an MLflow input dataset, with its sha256 as digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="http",
                          source=json.dumps({"url": f"file://{source}"}))
        entity = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])
        retry(lambda: self.tracking.log_inputs(self.run_id, datasets=[entity]), "log input")

    def log_artifact(self, path: Path) -> None:
        retry(lambda: self.tracking.log_artifact(self.run_id, str(path)), "log artifact")

    def log_text(self, text: str, artifact_file: str) -> None:
        retry(lambda: self.tracking.log_text(self.run_id, text, artifact_file), "log artifact")

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.tracking.set_terminated(self.run_id, status=status), "end run")

    def supersede_earlier_runs(self, cell: dict[str, object]) -> list[str]:
        """Tag the earlier finished runs of this table cell (same CELL_TAGS values; made with
        another config or code) `superseded_by` this run: the reports now hold this run's
        numbers. Returns their ids."""
        query = " and ".join(f"tags.{key} = '{cell[key]}'" for key in CELL_TAGS)
        earlier = retry(lambda: self.tracking.search_runs(
            [self.experiment_id], filter_string=f"{query} and attributes.status = 'FINISHED'",
            max_results=1000), "search runs")
        superseded = [run.info.run_id for run in earlier if run.info.run_id != self.run_id
                      and "superseded_by" not in run.data.tags]
        for run_id in superseded:
            retry(lambda run_id=run_id: self.tracking.set_tag(run_id, "superseded_by", self.run_id),
                  "tag superseded run")
        return superseded


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("MLflow helpers")
    parser.add_argument("command", choices=["init"])
    parser.add_argument("--experiment", required=True)
    args = parser.parse_args(argv)
    tracking = client()   # creates the SQLite schema on first use
    experiment_id(tracking, args.experiment)
    print(f"MLflow tracking store {tracking_uri()} ready (experiment {args.experiment!r})")


if __name__ == "__main__":
    main()
