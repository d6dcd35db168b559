"""pipeline.tracking.RunLogger against the real MLflow SQLite store: a restarted job continues
its run, and the steps it repeats after resuming from a checkpoint are logged once."""
from pathlib import Path

import pytest

from pipeline.tracking import RunLogger


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def history(logger: RunLogger, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in logger.tracking.get_metric_history(logger.run_id, key)]


def test_resumed_run_logs_each_step_once_per_key(store: Path):
    id_file = store / "checkpoints" / "mlflow_run_id.txt"
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
