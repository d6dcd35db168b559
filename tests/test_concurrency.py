"""Eight training jobs at once (`snakemake --cores 8`) log to the default SQLite MLflow store
(sqlite:///mlflow.db in the working directory) without a lost or failed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT, load_params, load_study
from pipeline.data import download, split

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

SEEDS = list(range(8))
STUDY = {
    "study": {"name": "parallel", "n_labels": [10], "seeds": SEEDS, "algorithms": ["fixmatch"]},
    "models": {"small_cnn": {"width": 4}},
    # Every step logs, every other step evaluates: many small writes from every job at once.
    "train": {"steps": 10, "batch_size": 4, "uratio": 2, "eval_every": 2, "log_every": 1,
              "checkpoint_every": 5, "last_k": 2, "eval_batch_size": 512},
}
RUN_DIR = "results/parallel/digits-10/fixmatch/seed{seed}"


@pytest.fixture(scope="module")
def parallel_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("parallel")
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    # The data and splits first, in this process, so that Snakemake starts exactly the eight
    # training jobs together (and the test spends no time on nine more process start-ups).
    study = load_study(load_params(ROOT / "params.yaml"))
    manifest = workdir / study.manifest_path("digits")
    download.main(["--dataset", "digits", "--options", json.dumps({"test_size": 497,
                   "partition_seed": 0}), "--manifest", str(manifest)])
    for seed in SEEDS:
        split.main(["--manifest", str(manifest), "--n-labels", "10", "--seed", str(seed),
                    "--out", str(workdir / study.split_path("digits", 10, seed))])
    targets = [f"{RUN_DIR.format(seed=seed)}/metrics.json" for seed in SEEDS]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the default
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "8",
         "--configfile", "study.yaml", "--", *targets],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    return workdir, result


def test_eight_parallel_jobs_all_succeed(parallel_study):
    workdir, result = parallel_study
    assert result.returncode == 0, result.stderr[-6000:]
    assert result.stderr.count("Finished jobid") == len(SEEDS)   # nothing but the 8 jobs ran
    assert "Execute 8 jobs" in result.stderr   # started together
    for seed in SEEDS:
        log = (workdir / f"logs/parallel/train/digits-10-fixmatch-seed{seed}.log").read_text()
        assert "Traceback" not in log and "locked" not in log, log


def test_every_job_is_one_finished_mlflow_run_with_all_its_metrics(parallel_study):
    from mlflow.tracking import MlflowClient

    workdir, result = parallel_study
    assert result.returncode == 0
    assert (workdir / "mlflow.db").exists()   # the default store, in the working directory
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * len(SEEDS)   # no FAILED
    assert sorted(int(run.data.tags["seed"]) for run in runs) == SEEDS
    by_id = {run.info.run_id: run for run in runs}
    for seed in SEEDS:
        run_json = json.loads((workdir / RUN_DIR.format(seed=seed) / "run.json").read_text())
        run = by_id[run_json["mlflow_run_id"]]
        assert run.data.tags["seed"] == str(seed)
        steps = STUDY["train"]["steps"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == \
            list(range(1, steps + 1))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "ema/error")] == \
            list(range(2, steps + 1, 2))
        metrics = json.loads((workdir / RUN_DIR.format(seed=seed) / "metrics.json").read_text())
        for key, value in metrics["metrics"].items():
            assert run.data.metrics[f"final/{key}"] == pytest.approx(value)
        assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def open_store_and_log_a_run(index: int) -> str:
    from pipeline.runs.tracking import RunLogger

    logger = RunLogger("fresh", f"job{index}", Path(os.environ["RUN_IDS"]) / f"{index}.txt",
                       tags={"index": str(index)}, params={"index": index})
    logger.log_metrics(1, {"x": float(index)})
    logger.finish()
    return logger.run_id


def test_jobs_opening_a_new_sqlite_store_at_once_create_its_schema_once(tmp_path, monkeypatch):
    """Without Snakemake's onstart (jobs started by hand or by another scheduler), eight jobs
    racing to create the schema of a new store all succeed (MLflow's migrations do not)."""
    import multiprocessing

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RUN_IDS", str(tmp_path / "ids"))
    # fork: the children share this process's imports (no 8 x 10 s of start-up).
    with multiprocessing.get_context("fork").Pool(8) as pool:
        run_ids = pool.map(open_store_and_log_a_run, range(8))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(run_ids)
    assert all(run.info.status == "FINISHED" and "x" in run.data.metrics for run in runs)
