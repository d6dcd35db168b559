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


def test_a_resumed_run_gets_its_params_again_and_the_tags_of_where_it_ran_now(store: Path):
    id_file = store / "id.txt"
    first = RunLogger("exp", "run", id_file, {"execution.threads": 1}, {"lr": 0.03})
    second = RunLogger("exp", "run", id_file, {"execution.threads": 4}, {"lr": 0.03})
    run = second.tracking.get_run(second.run_id)
    assert second.run_id == first.run_id
    assert run.data.params == {"lr": "0.03"}
    assert run.data.tags["execution.threads"] == "4" and run.data.tags["resumed"] == "true"


def test_a_run_from_uncommitted_code_keeps_the_diff(store: Path, monkeypatch):
    from pipeline import train
    from pipeline.config import default_params, load_study

    monkeypatch.setattr(train, "git_diff", lambda: "diff --git a/x.py b/x.py\n+changed\n")
    run = load_study(default_params()).run_config("digits", 10, "fixmatch", 0)
    provenance = {"config_hash": run["config_hash"], "code_digest": "d", "split_sha256": "s",
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
    assert new.supersede_earlier_runs(CELL) == [old.run_id]
    tags = lambda logger: new.tracking.get_run(logger.run_id).data.tags
    assert tags(old)["superseded_by"] == new.run_id
    assert "superseded_by" not in tags(other_seed) and "superseded_by" not in tags(new)


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
