"""MLflow tracking: one MLflow run per training job, resumed under the same run id, that holds
every step once whatever stops the job (pipeline/runs/tracking_store.py opens the store).

A job's run record (`mlflow_run.json` in its checkpoint folder) names its store and run. Creating
the run is one idempotent step: the record first gets a fresh attempt id, then the run is created
with that id and all its tags in one call, then the record gets the run id; a job killed between
the two finds its run again by the attempt id. Params and tags are logged again on every start.

A tracking store that stops answering mid-run does not stop training: metric values wait in
memory and go out when it answers again. Before a job writes its outputs, `sync` logs what MLflow
still lacks (values it could not take, and the steps a resumed job did before its checkpoint,
from the checkpoint's history), waiting up to SSL_REPRO_TRACKING_WAIT seconds (default 300) for
the store; failing that, the job stops with its last checkpoint kept, and a rerun completes it.
A value sent again (the store took it, its answer was lost) is stored once: MLflow keys a value by
key, step, timestamp and value, and a kept value keeps its timestamp. The job's other requests
(opening its run, the split, artifacts, ending the run) wait as long for an HTTP server that does
not answer or answers 5xx (it restarts, or its database does): only metric values never wait.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ..errors import UserError, argument_parser, cli
from ..files import read_json, write_json
from ..run_config import RunConfig
from .tracking_store import (DEFAULT_URI, WAIT_POLL, check_sqlite_location, client, retry,
                             store_error, store_identity, tracking_uri, tracking_wait, waiting)

# The project folder (pipeline/runs/ is two levels down): the git repository a run records.
PROJECT = Path(__file__).resolve().parents[2]

__all__ = ["DEFAULT_URI", "RunLogger", "client", "experiment_id", "git_commit", "git_diff",
           "tracking_uri"]

# MLflow 3 opens an experiment without this tag on its (empty) GenAI traces page; with it, on
# the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The tags that name a table cell's run: a newer finished run of the same cell supersedes older ones.
# A variant's runs (pipeline/variants.py) also have the tag VARIANT_TAG, which the others lack: a
# cell is these tags' values and the variant's name, or the absence of one.
CELL_TAGS = ("study", "dataset", "n_labels", "algorithm", "seed")
VARIANT_TAG = "variant"
ATTEMPT_TAG = "ssl_repro_attempt"
# A training job's HTTP requests: a few quick retries instead of MLflow's minutes (7 retries,
# 120 s timeouts), since a failed metric write is kept and sent again later.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
RETRY_EVERY = 10.0   # seconds between attempts to reach a store that stopped answering
BATCH = 1000         # MLflow's limit of metric values per log_batch


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
    cwd = cwd or PROJECT
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
    cwd = cwd or PROJECT
    try:
        return subprocess.run(["git", "diff", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        return f"git diff HEAD failed: {error}\n"


class RunLogger:
    """The MLflow run of one training job. `record` (mlflow_run.json, kept beside the checkpoint)
    makes a restarted job continue the same run instead of opening a duplicate."""

    def __init__(self, experiment: str, run_name: str, record: Path, tags: dict[str, str],
                 params: dict[str, object]):
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        self.uri, self.record, self.wait = tracking_uri(), record, tracking_wait()
        # a SQLite file on a network file system, written from a cluster's nodes: refused
        check_sqlite_location(self.uri, other_hosts=bool(os.environ.get("SLURM_JOB_ID")))
        self.tracking = client(self.wait)   # a server that restarts is waited for
        self._logged: dict[str, set[int]] = {}
        self._pending: list = []          # metric values the store has not taken yet
        self._failure: tuple[int, str] | None = None   # (step, error) since the store failed
        self._next_attempt = 0.0
        self.failed_writes = False        # some write failed: `sync` checks the whole history
        self.step = 0
        # Started again whole when the server fails midway: every step of it is idempotent.
        waiting(self.uri, self.wait, lambda: self._open(experiment, run_name, tags, params),
                "start this job's run in")

    def _call(self, action, what: str, doing: str):
        """A write to the store, waited for while the server restarts (`waiting`)."""
        return waiting(self.uri, self.wait, lambda: retry(action, what), doing)

    def _open(self, experiment: str, run_name: str, tags: dict[str, str],
              params: dict[str, object]) -> None:
        from mlflow.entities import Param, RunTag

        self.experiment_id = experiment_id(self.tracking, experiment)
        saved = self._read_record()
        self.run_id = self._existing_run(saved)
        # A resumed run repeats the steps between its checkpoint and the kill; what MLflow
        # already holds of them is not logged twice (per key: the kill may fall between keys).
        self.resumed = self.run_id is not None
        if self.run_id is None:
            self.run_id = self._create_run(saved, run_name, tags)
        else:
            retry(lambda: self.tracking.update_run(self.run_id, status="RUNNING"), "reopen run")
            tags = {**tags, "resumed": "true"}
        # Logged on every start: the same params again are accepted, and each attempt's tags
        # (where it ran) replace the last one's.
        retry(lambda: self.tracking.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()]), "log params")

    # ---- the run record -------------------------------------------------------------------
    def _read_record(self) -> dict:
        saved = read_json(self.record, "MLflow run record") if self.record.exists() else {}
        if saved and saved.get("tracking_uri") != store_identity(self.uri):
            raise UserError(
                f"this job's checkpoint belongs to MLflow run {saved.get('run_id')} in the store "
                f"{saved.get('tracking_uri')!r} ({self.record}), but MLFLOW_TRACKING_URI now "
                f"names {store_identity(self.uri)!r}. Point MLFLOW_TRACKING_URI at the first "
                f"store again to continue that run; or, to record this job as a new run in the "
                f"new store, delete {self.record}: it then resumes from its checkpoint and logs "
                f"the steps done so far again from the checkpoint's history")
        return saved

    def _write_record(self, **fields) -> None:
        write_json(self.record, {"tracking_uri": store_identity(self.uri), **fields})

    def _existing_run(self, saved: dict) -> str | None:
        from mlflow.exceptions import MlflowException

        run_id = saved.get("run_id")
        if not run_id:
            return None
        try:
            retry(lambda: self.tracking.get_run(run_id), "read run")
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise UserError(
                f"this job's checkpoint belongs to MLflow run {run_id} ({self.record}), which "
                f"the store {self.uri!r} does not hold: was the store deleted or replaced? Put "
                f"the store that holds it back; or, to record this job as a new run, delete "
                f"{self.record}: it then resumes from its checkpoint and logs the steps done so "
                f"far again from the checkpoint's history") from error
        return run_id

    def _create_run(self, saved: dict, run_name: str, tags: dict[str, str]) -> str:
        attempt = saved.get("attempt")
        if attempt:   # killed after creating its run, before recording the run id?
            found = retry(lambda: self.tracking.search_runs(
                [self.experiment_id], filter_string=f"tags.{ATTEMPT_TAG} = '{attempt}'",
                max_results=1), "search runs")
            if found:
                self._write_record(attempt=attempt, run_id=found[0].info.run_id)
                return found[0].info.run_id
        else:
            attempt = uuid.uuid4().hex
            self._write_record(attempt=attempt)   # atomic: never an empty record
        run = retry(lambda: self.tracking.create_run(
            self.experiment_id, run_name=run_name,
            tags={"mlflow.runName": run_name, ATTEMPT_TAG: attempt,
                  **{k: str(v) for k, v in tags.items()}}), "create run")
        self._write_record(attempt=attempt, run_id=run.info.run_id)
        return run.info.run_id

    # ---- metrics ----------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Log `metrics` at `step`; a store that fails does not stop the job (see `sync`)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.step = step
        self._pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if self._failure and time.monotonic() < self._next_attempt:
            return   # the store failed a moment ago: keep training, try again later
        try:
            self._flush()
        except Exception as error:  # noqa: BLE001 - any store failure: keep training
            if self._failure is None:
                print(f"warning: the MLflow tracking store {self.uri!r} failed at step {step} "
                      f"({type(error).__name__}: {' '.join(str(error).split())[:300]}); "
                      f"training goes on and its metric values are logged once the store "
                      f"answers again", file=sys.stderr, flush=True)
                self._failure = (step, f"{type(error).__name__}: {' '.join(str(error).split())}")
            self.failed_writes = True
            self._next_attempt = time.monotonic() + RETRY_EVERY
            return
        if self._failure:
            print(f"the MLflow tracking store answers again (step {step}): the values kept "
                  f"since step {self._failure[0]} are logged", file=sys.stderr, flush=True)
            self._failure = None

    def _flush(self) -> None:
        """Send the kept values; a resumed run's only where the store lacks them."""
        while self._pending:
            batch = self._pending[:BATCH]
            if self.resumed:
                batch = [m for m in batch if m.step not in self._logged_steps(m.key)]
            if batch:
                retry(lambda batch=batch: self.tracking.log_batch(self.run_id, metrics=batch),
                      "log metrics")
                for metric in batch if self.resumed else ():
                    self._logged[metric.key].add(metric.step)
            del self._pending[:BATCH]

    def _logged_steps(self, key: str) -> set[int]:
        if key not in self._logged:
            history = retry(lambda: self.tracking.get_metric_history(self.run_id, key),
                            "read metric history")
            self._logged[key] = {m.step for m in history}
        return self._logged[key]

    def sync(self, history: list[dict[str, float]], resumed_from: int,
             checkpoint: Path | None = None) -> None:
        """Before the outputs: log what the store lacks of `history` (rows with a `step`: what
        the trainer logged). Checked value by value when the job resumed from a checkpoint or a
        write failed; waits for a store that does not answer, then stops the job."""
        wait = self.wait
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                self._flush()
                if resumed_from or self.failed_writes:
                    self._log_missing(history)
                break
            except Exception as error:   # waited for below, then reported
                self._failure = self._failure or (
                    self.step, f"{type(error).__name__}: {' '.join(str(error).split())}")
                if time.monotonic() >= deadline:
                    raise self._stopped(checkpoint, wait) from error
                if not told:
                    print(f"waiting up to {wait:.0f} s (SSL_REPRO_TRACKING_WAIT) for the MLflow "
                          f"tracking store {self.uri!r} to answer again", file=sys.stderr,
                          flush=True)
                    told = True
                time.sleep(min(WAIT_POLL, max(deadline - time.monotonic(), 0.1)))
        if self._failure:
            print("the MLflow tracking store answers again: every value is logged",
                  file=sys.stderr, flush=True)
            self._failure = None

    def _log_missing(self, history: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._logged = {}   # read again: what the store holds now
        keys = sorted({key for row in history for key in row if key != "step"})
        self._pending = [Metric(key, float(row[key]), now, int(row["step"])) for key in keys
                         for row in history
                         if key in row and int(row["step"]) not in self._logged_steps(key)]
        self._flush()

    def _stopped(self, checkpoint: Path | None, wait: float) -> UserError:
        step, error = self._failure
        kept = (f"its checkpoint {checkpoint} is kept, with every value" if checkpoint else
                "the values are lost with this process")
        return UserError(
            f"the MLflow tracking store {self.uri!r} has not answered since step {step} ({error}), "
            f"and waiting {wait:.0f} s (SSL_REPRO_TRACKING_WAIT) for it at the end of training "
            f"did not help. This job stops before writing its outputs; {kept}. Start the store "
            f"again (or free its disk) and rerun snakemake: the job resumes from that checkpoint, "
            f"logs what MLflow run {self.run_id} lacks and writes its outputs")

    def log_input(self, name: str, digest: str, source: str) -> None:
        """The split as an MLflow input dataset, with its sha256 as digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="http",
                          source=json.dumps({"url": f"file://{source}"}))
        entity = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])
        self._call(lambda: self.tracking.log_inputs(self.run_id, datasets=[entity]), "log input",
                   "log the split as an input to")

    def log_artifact(self, path: Path) -> None:
        """(A full disk, a server away for good: one paragraph.)"""
        self._call(lambda: self.tracking.log_artifact(self.run_id, str(path)), "log artifact",
                   f"log {path.name} as an artifact to")

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(lambda: self.tracking.log_text(self.run_id, text, artifact_file),
                   "log artifact", f"log {artifact_file} as an artifact to")

    def finish(self) -> None:
        self._call(lambda: self.tracking.set_terminated(self.run_id, status="FINISHED"),
                   "end run", "end this job's run in")

    def fail(self) -> None:
        """Mark the run FAILED if the store can take it now (the job is stopping for another
        reason, which is what it reports: no waiting)."""
        try:
            retry(lambda: self.tracking.set_terminated(self.run_id, status="FAILED"), "end run")
        except Exception as error:  # noqa: BLE001 - the job's own error is the one to report
            print(f"(the MLflow run {self.run_id} could not be marked FAILED: "
                  f"{type(error).__name__}: {str(error)[:200]})", file=sys.stderr)

    def supersede_earlier_runs(self, run: RunConfig) -> list[str]:
        """Tag the earlier finished runs of `run`'s table cell (same CELL_TAGS values and the same
        variant or none; made with another config or code) `superseded_by` this run: the reports
        now hold this run's numbers. Returns their ids. (MLflow's filter cannot ask for a tag's
        absence, so the variant is compared here.)"""
        query = " and ".join(f"tags.{key} = '{getattr(run, key)}'" for key in CELL_TAGS)
        earlier = self._call(lambda: self.tracking.search_runs(
            [self.experiment_id], filter_string=f"{query} and attributes.status = 'FINISHED'",
            max_results=1000), "search runs", "search the runs of this table cell in")
        superseded = [other.info.run_id for other in earlier if other.info.run_id != self.run_id
                      and "superseded_by" not in other.data.tags
                      and other.data.tags.get(VARIANT_TAG) == run.variant]
        for run_id in superseded:
            self._call(lambda run_id=run_id: self.tracking.set_tag(
                run_id, "superseded_by", self.run_id), "tag superseded run", "tag a run in")
        return superseded


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("MLflow helpers")
    parser.add_argument("command", choices=["init"])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--jobs-on-other-hosts", action="store_true",
                        help="the jobs run on other hosts (a cluster): a SQLite store on a "
                        "network file system is refused")
    args = parser.parse_args(argv)
    warning = check_sqlite_location(tracking_uri(), args.jobs_on_other_hosts)
    if warning:
        print(warning, file=sys.stderr)
    tracking = client()   # creates the SQLite schema on first use; no waiting: seconds
    try:
        experiment_id(tracking, args.experiment)
    except Exception as error:  # reported as one paragraph
        raise store_error(tracking_uri(), error, "create the experiment in") from error
    print(f"MLflow tracking store {tracking_uri()} ready (experiment {args.experiment!r})")


if __name__ == "__main__":
    main()
