"""End to end: Snakemake runs a tiny study in a temporary folder; the table, a figure and the
MLflow runs exist; a second run does nothing; a bad config stops before any job starts."""
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from conftest import snakemake, snakemake_all
from pipeline.config import ROOT
from pipeline.errors import UserError

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


def test_study_writes_table_figures_and_metrics_under_its_own_name(tiny_study):
    """No reports.dir: the tiny study writes reports/tiny/, never the default study's files."""
    assert sorted(path.name for path in (tiny_study / "reports").iterdir()) == ["tiny"]
    table = (tiny_study / "reports/tiny/tables/main.tex").read_text()
    assert r"\toprule" in table and "FixMatch" in table and "Supervised" in table
    assert (tiny_study / "reports/tiny/figures/error_curves.pdf").read_bytes().startswith(b"%PDF")
    assert (tiny_study / "reports/tiny/figures/error_curves.png").stat().st_size > 1000
    metrics = json.loads((tiny_study / "reports/tiny/metrics.json").read_text())
    assert set(metrics["digits-10"]) == {"supervised", "fixmatch"}


def test_every_training_job_is_one_finished_mlflow_run_with_tags(tiny_study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny_study}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    # the README's runs table: experiment 1 of a new store, a page of runs rather than traces
    assert experiment.experiment_id == "1"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        for tag in ("algorithm", "dataset", "n_labels", "seed", "git_commit", "config_hash",
                    "split_sha256", "code_digest", "execution.device", "execution.threads"):
            assert run.data.tags[tag]
        # where the job ran is recorded as what it really used, not as a parameter
        assert run.data.tags["execution.threads"] == "2"
        assert run.data.tags["execution.device"] == "cpu"
        assert "train.threads" not in run.data.params and "train.device" not in run.data.params
        history = client.get_metric_history(run.info.run_id, "ema/error")
        assert [m.step for m in history] == [3, 6]
        assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    seeds = sorted(json.loads((tiny_study / f"results/tiny/digits-10/fixmatch/seed{s}/run.json")
                              .read_text())["mlflow_run_id"] for s in (0, 1))
    assert seeds == sorted(r.info.run_id for r in runs if r.data.tags["algorithm"] == "fixmatch")
    metrics = json.loads((tiny_study / "results/tiny/digits-10/fixmatch/seed0/metrics.json")
                         .read_text())
    assert metrics["run"]["dataset_options"] == {"test_size": 497, "partition_seed": 0}
    assert len(metrics["code_digest"]) == 64 and metrics["run"]["train"]["steps"] == 6
    fixmatch = next(r for r in runs if r.data.tags["algorithm"] == "fixmatch")
    assert fixmatch.data.tags["code_digest"] == metrics["code_digest"]


def test_the_jobs_of_a_study_start_warm_from_its_fork_server(tiny_study):
    """Four train jobs: onstart starts a fork server; the jobs that start once it is ready fork
    from it (run.json says which), and it stops with Snakemake, saying its CPU time."""
    path, deadline = tiny_study / "logs/forkserver.log", time.monotonic() + 10
    while "stopping (" not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)   # it looks for its Snakemake process once a second
    log = path.read_text()
    assert "serving" in log and "stopping (" in log
    starts = {path.parent.name + path.parent.parent.name: json.loads(path.read_text())["start"]
              for path in tiny_study.glob("results/tiny/*/*/seed*/run.json")}
    assert len(starts) == 4 and set(starts.values()) <= {"warm", "cold"}
    warm = sum(start == "warm" for start in starts.values())
    assert warm >= 1 and log.count(": pipeline.runs.train --run-config") == warm


def test_second_run_with_nothing_changed_does_nothing(tiny_study):
    result = snakemake(tiny_study, "--cores", "2", "--configfile", "tiny.yaml", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_the_accepted_runs_checkpoints_are_gone(tiny_study):
    """Kept until Snakemake accepted each run's outputs; the rule evaluate then removed them."""
    assert not list((tiny_study / "checkpoints").rglob("*.pt"))
    assert not list((tiny_study / "checkpoints").rglob("mlflow_run.json"))


def test_another_thread_count_reruns_nothing(tiny_study):
    """train.threads (documented as not changing results) is not in the config hash, and the
    thread count in the shell command is no rerun trigger."""
    result = snakemake(tiny_study, "--cores", "2", "--configfile", "tiny.yaml", "--dry-run",
                       "--config", 'train={"threads": 2}')
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"train": {"steps": -1}}))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert "train.steps = -1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_command_line_numbers_and_booleans_reach_the_jobs_as_such(tmp_path):
    """A `--config` value: Snakemake reads nested values as strings; the workflow reads them
    again as the numbers and booleans they are, into each run's config file, written when the
    workflow starts (here with --until download, which trains nothing). A train job's command
    line names that file: it is short, and Snakemake's progress lines are not buried under it."""
    overrides = ["--config", 'train={"steps": 200, "nesterov": false}', 'study={"seeds": [7]}']
    (tmp_path / "dry").mkdir()
    results = snakemake_all({
        "run": (tmp_path, ["--cores", "1", "--until", "download", *overrides]),
        "dry": (tmp_path / "dry", ["--cores", "1", "--dry-run", "--printshellcmds", *overrides])})
    assert results["run"].returncode == 0, results["run"].stderr[-3000:]
    files = sorted((tmp_path / "results/digits/run_configs").glob("*.json"))
    assert len(files) == 2 * 9   # label budgets x algorithms x the one seed
    for path in files:
        run = json.loads(path.read_text())
        assert (run["train"]["steps"], run["train"]["nesterov"], run["seed"]) == (200, False, 7)
    commands = [line for line in results["dry"].stdout.splitlines()
                if "pipeline.runs.train" in line]
    assert len(commands) == 18
    assert all("--run-config results/digits/run_configs/digits-" in line and len(line) < 1000
               and '"steps"' not in line for line in commands)   # was kilobytes of JSON


def test_a_bad_command_line_value_is_blamed_on_the_command_line(tmp_path):
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", "--config", 'train={"steps": 0}')
    assert result.returncode != 0
    assert "the command line (--config): train.steps = 0 is not allowed" in result.stderr
    assert "params.yaml: train.steps" not in result.stderr


def image_folder(root: Path, colours: dict[str, tuple[int, int, int]]) -> Path:
    from PIL import Image

    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for index in range(5):
            Image.new("RGB", (8, 8), tuple(c + index for c in colour)).save(root / name / f"{index}.png")
    return root


def image_study(workdir: Path, folder: Path, name: str) -> str:
    config = {"study": {"name": name, "dataset": "image_folder", "n_labels": [2],
                        "algorithms": ["supervised"]},
              "datasets": {"image_folder": {"path": str(folder)}}}
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return f"{name}.yaml"


def test_an_image_folder_study_has_its_own_data_and_reruns_when_the_images_change(tmp_path):
    """Two studies on two folders get two data keys (one holds an image whose name is not
    UTF-8); changing an image reruns its download."""
    from pipeline.config import deep_merge, load_params, load_study

    folders = [image_folder(tmp_path / f"images{i}", {"red": (200, 0, 0), "blue": (0, 0, 200)})
               for i in (1, 2)]
    # a file name that is not UTF-8 (the DAG's folder fingerprint once failed on it)
    os.rename(folders[0] / "blue" / "4.png", os.fsencode(folders[0] / "blue") + b"/\xe9t\xe9.png")
    studies = [load_study(deep_merge(load_params(ROOT / "params.yaml"),
                                     yaml.safe_load((tmp_path / image_study(tmp_path, f, f"s{i}"))
                                                    .read_text())))
               for i, f in enumerate(folders)]
    manifests = [study.manifest_path("image_folder") for study in studies]
    assert manifests[0] != manifests[1]
    # the target before --configfile, which takes every word after it as a config file
    made = snakemake(tmp_path, manifests[0], "--cores", "1", "--configfile", "s0.yaml")
    assert made.returncode == 0, made.stderr[-3000:]
    unchanged = snakemake(tmp_path, manifests[0], "-n", "--cores", "1", "--configfile", "s0.yaml")
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    from PIL import Image

    Image.new("RGB", (8, 8), (0, 200, 0)).save(folders[0] / "red" / "0.png")
    changed = snakemake(tmp_path, manifests[0], "-n", "--cores", "1", "--configfile", "s0.yaml")
    assert "rule download" in changed.stdout and "params have changed" in changed.stdout


def test_the_documented_offline_download_command_plans_the_download_only(tmp_path):
    """profiles/README.md: `snakemake --cores 1 --until download --configfile <paper study>`."""
    result = snakemake(tmp_path, "--cores", "1", "--until", "download", "--dry-run",
                       "--configfile", str(ROOT / "configs/dash-cifar10.yaml"),
                       env={"CUDA_VISIBLE_DEVICES": ""})   # as on a machine without a GPU
    assert result.returncode == 0, result.stderr[-3000:]
    assert "download" in result.stdout and "rule train" not in result.stdout
    # the dry run says what its training jobs would cost here (pipeline/workflow/devices.py)
    said = " ".join(result.stderr.split())
    assert "warning: 108 training run(s) of 1,048,576 steps each (wrn_28_2, 960 images a step)" \
        in said and "days. They want a GPU" in said


def test_a_gpu_study_on_a_machine_without_one_names_its_config_file(tmp_path):
    """The GPU smoke study's train.device comes from configs/gpu-smoke.yaml: the job that finds
    no GPU says so, naming that file (not params.yaml) as the place to change."""
    from pipeline.runs.device import choose_device

    result = snakemake(tmp_path, "--cores", "1", "--dry-run", "--printshellcmds",
                       "--configfile", str(ROOT / "configs/gpu-smoke.yaml"),
                       env={"CUDA_VISIBLE_DEVICES": ""})   # as on a machine without a GPU
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ask for a GPU (train.device 'cuda', set in configs/gpu-smoke.yaml) and this machine " \
        "shows none" in " ".join(result.stderr.split())
    assert "--device cuda --threads" in result.stdout
    assert "--device-source configs/gpu-smoke.yaml" in result.stdout
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"train.device is 'cuda' \(set in configs/gpu-smoke"):
            choose_device("cuda", "configs/gpu-smoke.yaml")
