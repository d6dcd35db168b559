"""Resume and determinism: a run killed at any step and restarted ends exactly where an
uninterrupted run ends (CPU, bit for bit); the same seed gives the same numbers, another seed
other data order, augmentation and initial weights; an unreadable checkpoint is an error."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from semisup.algorithms import ALGORITHMS, build_algorithm
from semisup.data import get_dataset
from semisup.data.splits import make_split
from semisup.errors import CheckpointError
from semisup.data.image import image_train_data
from semisup.models import build_network
from semisup.train import TrainConfig, Trainer

from pipeline.config import (ROOT, RunConfig, deep_merge, default_params, default_train_options,
                             load_params, load_study)
from pipeline.runs.train import image_augment, train_config

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
TINY_TRAIN = train_config(default_train_options(
    "digits", steps=12, batch_size=4, uratio=2, eval_every=3, log_every=2, checkpoint_every=3,
    last_k=3, ema_decay=0.9))
AUGMENT = image_augment(default_train_options("digits"))
DIGITS_OPTIONS = default_params()["datasets"]["digits"]
# Every registered algorithm, with the default study's hyperparameters and what makes its state
# change within 12 steps: confident enough pseudo-labels (tau 0.5); Dash's warm-up ending mid-run
# (official: the loss buffer of a 3-step epoch gives rho_hat; usb: the evaluation at step 3 does).
DEFAULT_PARAMS = load_params(ROOT / "params.yaml")["algorithms"]
CASES = {name: (name, DEFAULT_PARAMS.get(name, {})) for name in sorted(ALGORITHMS)}
CASES["fixmatch"] = ("fixmatch", {**DEFAULT_PARAMS["fixmatch"], "tau": 0.5})
CASES["flexmatch"] = ("flexmatch", {**DEFAULT_PARAMS["flexmatch"], "tau": 0.5})
CASES["pseudolabel"] = ("pseudolabel", {**DEFAULT_PARAMS["pseudolabel"], "tau": 0.5})
CASES["crmatch"] = ("crmatch", {**DEFAULT_PARAMS["crmatch"], "tau": 0.5})
CASES["defixmatch"] = ("defixmatch", {**DEFAULT_PARAMS["defixmatch"], "tau": 0.5})
CASES["dash"] = ("dash", {**DEFAULT_PARAMS["dash"], "variant": "official", "warmup_epochs": 1,
                          "steps_per_epoch": 3})
CASES["dash-usb"] = ("dash", {**DEFAULT_PARAMS["dash"], "variant": "usb", "warmup_steps": 3,
                              "steps_per_epoch": 3})
CASES["dash-usb-initial"] = ("dash", {**CASES["dash-usb"][1], "rho_hat_model": "initial_weights"})
# CoMatch's memory smoothing and SimMatch's similarities from step 4 (semilearn: 1024), a memory
# of 2 steps and an alignment queue of 4 batches that wrap within the run.
CASES["comatch"] = ("comatch", {**DEFAULT_PARAMS["comatch"], "tau": 0.5, "smoothing_start_step": 4,
                                "queue_batches": 2, "alignment_batches": 4})
CASES["simmatch"] = ("simmatch", {**DEFAULT_PARAMS["simmatch"], "tau": 0.5,
                                  "similarity_start_step": 4, "alignment_batches": 4})
# CTAugment's bin rates are state too: they change every step (a probe of the labeled batch).
# (tau 0: every strong view is in the loss. In 12 steps the rates move by about 1 %, which rarely
# changes a drawn bin: the rates themselves are compared in the test after the next one.)
CASES["fixmatch-ctaugment"] = ("fixmatch", {**DEFAULT_PARAMS["fixmatch"], "tau": 0.0})
CASES["remixmatch-ctaugment"] = CASES["remixmatch"]   # two strong views and a rotated one
CTAUGMENT = replace(AUGMENT, strong="ctaugment")
CASE_AUGMENT = {"fixmatch-ctaugment": CTAUGMENT, "remixmatch-ctaugment": CTAUGMENT}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as the default study's jobs (train.threads: 1); far faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(Exception):
    """Stands in for SIGKILL in-process: raised from the log callback, after a checkpoint."""


def make_trainer(digits, case: str, seed: int, checkpoint: Path | None = None,
                 log=lambda step, metrics: None, config: TrainConfig = TINY_TRAIN,
                 split_seed: int | None = None) -> Trainer:
    spec, data = digits
    split_seed = seed if split_seed is None else split_seed
    split = make_split(data.train_labels.numpy(), 20, data.num_classes, split_seed, "digits")
    train_data = image_train_data(
        replace(data, test_images=data.test_images[:64], test_labels=data.test_labels[:64]),
        torch.tensor(split["labeled_indices"]), spec.inputs, CASE_AUGMENT.get(case, AUGMENT),
        False, CPU)
    torch.manual_seed(seed)   # as pipeline.runs.train does before building the network
    network = build_network("small_cnn", data.num_classes, spec.inputs, width=4, bn_momentum=0.01)
    name, params = CASES[case]
    algorithm = build_algorithm(name, params, facts=train_data.facts(data.num_classes),
                                total_steps=config.steps)
    return Trainer(network, algorithm, train_data, config, seed, CPU, log=log,
                   checkpoint_path=checkpoint)


def kill_at(step_to_die: int):
    def log(step, metrics):
        if step >= step_to_die:
            raise Killed(step)
    return log


def same_result(first, second) -> None:
    """Bit-identical numbers (JSON keeps every float exactly; NaN statistics compare equal)."""
    for field in ("metrics", "curve", "stat_history"):
        assert as_json(getattr(first, field)) == as_json(getattr(second, field)), field


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True)


@pytest.fixture(scope="module")
def uninterrupted(digits):
    """Each case's uninterrupted run (seed 0), computed when first asked for."""
    results = {}

    def result(case: str):
        if case not in results:
            results[case] = make_trainer(digits, case, seed=0).fit()
        return results[case]
    return result


# ---- in-process resume -----------------------------------------------------------------------
# Killed at step 10 (resumed from 9), and for the algorithms whose state changes early also at
# step 6 (resumed from 3: FlexMatch's first records, Dash's warm-up just over, CoMatch's and
# SimMatch's similarities not yet on).
KILLS = [(case, 10) for case in CASES] + [(case, 5) for case in ("flexmatch", "dash", "dash-usb",
                                                                  "comatch", "simmatch",
                                                                  "fixmatch-ctaugment")]


@pytest.mark.parametrize("case,die_at", KILLS)
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(digits, uninterrupted, tmp_path,
                                                            case, die_at):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        make_trainer(digits, case, 0, checkpoint, log=kill_at(die_at)).fit()
    saved = torch.load(checkpoint, weights_only=False)
    assert 0 < saved["step"] < die_at <= saved["step"] + TINY_TRAIN.checkpoint_every
    resumed = make_trainer(digits, case, 0, checkpoint).fit()
    assert resumed.resumed_from == saved["step"]
    same_result(resumed, uninterrupted(case))


def test_ctaugment_bin_rates_travel_in_the_checkpoint_and_resume_exactly(digits, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    uninterrupted = make_trainer(digits, "fixmatch-ctaugment", 0)
    uninterrupted.fit()
    with pytest.raises(Killed):
        make_trainer(digits, "fixmatch-ctaugment", 0, checkpoint, log=kill_at(5)).fit()
    saved = torch.load(checkpoint, weights_only=False)
    assert (saved["augmentation"]["ctaugment"]["rates"] < 1).any()
    resumed = make_trainer(digits, "fixmatch-ctaugment", 0, checkpoint)
    resumed.fit()
    assert torch.equal(resumed.data.modality.ctaugment.rates,
                       uninterrupted.data.modality.ctaugment.rates)
    # A RandAugment run does not take them, and a CTAugment run does not start without them.
    with pytest.raises(CheckpointError, match="strong augmentation is not ctaugment"):
        make_trainer(digits, "fixmatch", 0, checkpoint).fit()
    del saved["augmentation"]
    torch.save(saved, checkpoint)
    with pytest.raises(CheckpointError, match="no CTAugment bin rates"):
        make_trainer(digits, "fixmatch-ctaugment", 0, checkpoint).fit()


def test_checkpoint_is_written_atomically_and_at_the_end(digits, uninterrupted, tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    make_trainer(digits, "fixmatch", 0, checkpoint).fit()
    assert torch.load(checkpoint, weights_only=False)["step"] == 12   # 3, 6, 9 and the last
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["checkpoint.pt"]   # no temp
    # Stopped after training (before its outputs were accepted): a rerun trains no step again.
    again = make_trainer(digits, "fixmatch", 0, checkpoint).fit()
    assert again.resumed_from == TINY_TRAIN.steps
    same_result(again, uninterrupted("fixmatch"))


@pytest.fixture(scope="module")
def good_checkpoint(digits, tmp_path_factory) -> bytes:
    checkpoint = tmp_path_factory.mktemp("good") / "checkpoint.pt"
    with pytest.raises(Killed):
        make_trainer(digits, "fixmatch", 0, checkpoint, log=kill_at(4)).fit()
    return checkpoint.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not a checkpoint"])
def test_unreadable_checkpoint_is_an_error_never_a_fresh_start(digits, good_checkpoint, tmp_path,
                                                               damage):
    checkpoint = tmp_path / "checkpoint.pt"
    if damage == "garbage":
        checkpoint.write_bytes(b"\x00not a checkpoint\xff" * 10)
    elif damage == "truncated":   # e.g. copied in part
        checkpoint.write_bytes(good_checkpoint[:len(good_checkpoint) // 2])
    else:   # a readable file of something else
        torch.save({"step": 3, "weights": torch.zeros(3)}, checkpoint)
    damaged = checkpoint.read_bytes()
    trainer = make_trainer(digits, "fixmatch", 0, checkpoint)
    with pytest.raises(CheckpointError) as caught:
        trainer.fit()
    assert str(checkpoint) in str(caught.value) and "cannot be read" in str(caught.value)
    assert f"delete {checkpoint}" in str(caught.value)
    assert trainer.step == 0 and checkpoint.read_bytes() == damaged   # left for the user


def test_checkpoint_of_another_model_is_refused(digits, good_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(good_checkpoint)
    trainer = make_trainer(digits, "fixmatch", 0, checkpoint)
    trainer.network = build_network("small_cnn", 10, get_dataset("digits").inputs, width=8,
                                    bn_momentum=0.01)   # another network
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint of this run"):
        trainer.fit()


def test_a_result_write_that_dies_midway_leaves_the_previous_file_whole(tmp_path):
    from pipeline.files import atomic_path, write_json

    metrics = tmp_path / "metrics.json"
    write_json(metrics, {"error": 1.5})
    with pytest.raises(Killed), atomic_path(metrics) as tmp:
        Path(tmp).write_text('{"error": 2')   # half written, then the process dies
        raise Killed
    assert json.loads(metrics.read_text()) == {"error": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]   # no temp file left


def test_checkpoint_of_another_config_is_refused(digits, tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        make_trainer(digits, "fixmatch", 0, checkpoint, log=kill_at(4)).fit()
    other = replace(TINY_TRAIN, optimizer=replace(TINY_TRAIN.optimizer, lr=0.1))
    with pytest.raises(CheckpointError, match="another seed or training config"):
        make_trainer(digits, "fixmatch", 0, checkpoint, config=other).fit()


# ---- determinism -----------------------------------------------------------------------------
def test_same_config_and_seed_give_identical_metrics(digits, uninterrupted):
    same_result(make_trainer(digits, "fixmatch", seed=0).fit(), uninterrupted("fixmatch"))


def test_bf16_autocast_runs_on_the_cpu_and_resumes_exactly(digits, uninterrupted, tmp_path):
    """precision bf16 takes effect on the CPU too (other numbers than fp32), and a bf16 run
    killed and resumed ends exactly where an uninterrupted bf16 run ends."""
    bf16 = replace(TINY_TRAIN, precision="bf16")
    straight = make_trainer(digits, "fixmatch", seed=0, config=bf16).fit()
    assert as_json(straight.stat_history) != as_json(uninterrupted("fixmatch").stat_history)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        make_trainer(digits, "fixmatch", 0, checkpoint, log=kill_at(7), config=bf16).fit()
    same_result(make_trainer(digits, "fixmatch", 0, checkpoint, config=bf16).fit(), straight)


def test_other_seed_changes_initialisation_data_order_and_augmentation(digits):
    # One split for both, so that only the run's own seed differs.
    first = make_trainer(digits, "fixmatch", 0, split_seed=0)
    second = make_trainer(digits, "fixmatch", 1, split_seed=0)
    first_weights = torch.cat([p.flatten() for p in first.network.parameters()])
    second_weights = torch.cat([p.flatten() for p in second.network.parameters()])
    assert not torch.equal(first_weights, second_weights)
    assert not torch.equal(first.unlabeled_sampler.next(64), second.unlabeled_sampler.next(64))
    assert not torch.equal(first.labeled_sampler.next(20), second.labeled_sampler.next(20))
    # The same images (fixed indices) augmented under each seed's augmentation stream.
    for trainer in (first, second):
        trainer.labeled_sampler.next = lambda count: torch.arange(count)
        trainer.unlabeled_sampler.next = lambda count: torch.arange(count)
    first_batch, second_batch = first.next_batch(), second.next_batch()
    assert torch.equal(first_batch.labeled.labels, second_batch.labeled.labels)
    assert torch.equal(first_batch.unlabeled.indices, second_batch.unlabeled.indices)
    for first_view, second_view in zip(first_batch.unlabeled.views, second_batch.unlabeled.views,
                                       strict=True):   # weak, strong
        assert not torch.equal(first_view, second_view)


# ---- through Snakemake: SIGKILL, rerun, same metrics, same MLflow run ---------------------------
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--cores", "1", "--configfile", "study.yaml", "--"]   # then the targets
STUDY = {
    "study": {"name": "resume", "n_labels": [10], "seeds": [0], "algorithms": ["fixmatch"]},
    "models": {"small_cnn": {"width": 4}},
    # Enough steps that the job is still running well after its first checkpoints.
    "train": {"steps": 150, "batch_size": 4, "uratio": 2, "eval_every": 25, "log_every": 1,
              "checkpoint_every": 7, "last_k": 3, "eval_batch_size": 512,
              # the reference run trains in this process, where torch is imported already
              "portable_numerics": False},
}
RUN_DIR = Path("results/resume/digits-10/fixmatch/seed0")
TARGET = str(RUN_DIR / "metrics.json")
DEFAULT = load_study(load_params(ROOT / "params.yaml"))   # digits' options: this study's
MANIFEST = Path(DEFAULT.manifest_path("digits"))
SPLIT = Path(DEFAULT.split_path("digits", 10, 0))


def workflow_env() -> dict[str, str]:
    """The default tracking store: sqlite:///mlflow.db in the working directory."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir}/mlflow.db")


def mlflow_runs(workdir: Path) -> list:
    experiment = client(workdir).get_experiment_by_name(STUDY["study"]["name"])
    return client(workdir).search_runs([experiment.experiment_id])


def without_commit(metrics: dict) -> dict:
    # Other commits may land in the repository between the two runs; nothing else may differ.
    return {k: v for k, v in metrics.items() if k != "git_commit"}


def run_config() -> RunConfig:
    """The run's config as the Snakefile builds it from params.yaml + study.yaml."""
    study = load_study(deep_merge(load_params(ROOT / "params.yaml"), STUDY))
    return study.run_config("digits", 10, "fixmatch", 0)


def train_argv(workdir: Path, out: Path, checkpoints: Path) -> list[str]:
    return ["--run-config", run_config().to_json(), "--manifest", str(workdir / MANIFEST),
            "--split", str(workdir / SPLIT), "--out", str(out), "--checkpoint-dir",
            str(checkpoints), "--threads", "1"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    """The reference: the rules' own commands, run in this process (saves process start-ups)."""
    from pipeline.data import download, split
    from pipeline.runs import train

    workdir = tmp_path_factory.mktemp("uninterrupted")
    options = json.dumps(run_config().dataset_options)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
        download.main(["--dataset", "digits", "--options", options, "--manifest", str(MANIFEST)])
        split.main(["--manifest", str(MANIFEST), "--n-labels", "10", "--seed", "0",
                    "--out", str(SPLIT)])
        train.main(train_argv(workdir, RUN_DIR, workdir / "checkpoints"))
    return workdir


def training_process(snakemake: subprocess.Popen, deadline: float):
    import psutil   # a dependency of Snakemake

    while time.monotonic() < deadline:
        assert snakemake.poll() is None, "snakemake ended before the training job started"
        for child in psutil.Process(snakemake.pid).children(recursive=True):
            try:
                # python -m pipeline.runs.train, not the shell
                if "pipeline.runs.train" in child.cmdline():
                    return child
            except psutil.Error:   # a short-lived process (a shell, `git`) already gone
                pass
        time.sleep(0.05)
    raise AssertionError("no training job started")


@pytest.mark.parametrize("killed", ["training job", "snakemake and training job"])
def test_run_killed_by_sigkill_resumes_on_rerun_to_identical_metrics_and_mlflow_run(
        uninterrupted_run, tmp_path, killed):
    workdir = tmp_path
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    shutil.copytree(uninterrupted_run / "data", workdir / "data")   # raw data and split
    snakemake = subprocess.Popen([*SNAKEMAKE, TARGET], cwd=workdir, env=workflow_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + 300
    job = training_process(snakemake, deadline)
    checkpoints = workdir / "checkpoints"
    while not list(checkpoints.rglob("checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)   # run on past the checkpoint: the kill lands between two of them
    if killed == "training job":   # e.g. the out-of-memory killer
        job.send_signal(signal.SIGKILL)
        assert snakemake.wait(timeout=120) != 0   # Snakemake sees the job fail and stops
    else:   # e.g. the machine's session ends: nothing gets to clean up
        os.killpg(snakemake.pid, signal.SIGKILL)
        snakemake.wait(timeout=120)
        # Snakemake's lock stays behind, and a plain rerun stops with a LockException that
        # says to run `snakemake --unlock` once first.
        unlock = subprocess.run([*SNAKEMAKE[:-1], "--unlock"], cwd=workdir, env=workflow_env(),
                                capture_output=True, text=True, timeout=600)
        assert unlock.returncode == 0, unlock.stderr[-4000:]
    assert not (workdir / TARGET).exists(), "the job finished before the kill; raise train.steps"
    log = workdir / "logs/resume/train/digits-10-fixmatch-seed0.log"
    [checkpoint] = checkpoints.rglob("checkpoint.pt")   # kept: it is not a declared output
    killed_after = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < killed_after < STUDY["train"]["steps"]
    run_id = json.loads((checkpoint.parent / "mlflow_run.json").read_text())["run_id"]
    [killed_run] = mlflow_runs(workdir)
    logged = max(m.step for m in client(workdir).get_metric_history(run_id, "train/loss"))
    print(f"kill landed after step {max(logged, killed_after)} (before step {logged + 1} was "
          f"logged); checkpoint at step {killed_after}; MLflow run {killed_run.info.status}")

    rerun = subprocess.run([*SNAKEMAKE, TARGET], cwd=workdir, env=workflow_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"resumed from checkpoint at step {killed_after}/" in log.read_text()
    # one train job: no fork server (it would import torch and MLflow a second time)
    assert not (workdir / "logs/forkserver.log").exists()
    resumed = json.loads((workdir / TARGET).read_text())
    reference = json.loads((uninterrupted_run / TARGET).read_text())
    assert without_commit(resumed) == without_commit(reference)
    run = json.loads((workdir / RUN_DIR / "run.json").read_text())
    assert run["resumed_from_step"] == killed_after and run["mlflow_run_id"] == run_id
    [mlflow_run] = mlflow_runs(workdir)   # one run, continued: no duplicate
    assert mlflow_run.info.run_id == run_id and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["resumed"] == "true"
    [reference_run] = mlflow_runs(uninterrupted_run)
    assert mlflow_run.data.metrics == reference_run.data.metrics   # the latest value of each
    # Every step once: the steps between the checkpoint and the kill are not logged twice.
    for key in ("train/loss", "ema/error", "train/mask_rate"):
        history = [(m.step, m.value) for m in client(workdir).get_metric_history(run_id, key)]
        reference = [(m.step, m.value) for m in client(uninterrupted_run).get_metric_history(
            reference_run.info.run_id, key)]
        assert sorted(history) == reference, key
    # Finished, but kept until Snakemake has accepted the outputs: at the last step, so that a
    # job stopped before that resumes without training.
    assert torch.load(checkpoint, weights_only=False)["step"] == STUDY["train"]["steps"]
    # The rule evaluate runs once Snakemake recorded the job: then the folder goes.
    summary = subprocess.run([*SNAKEMAKE, str(RUN_DIR.parent / "summary.json")], cwd=workdir,
                             env=workflow_env(), capture_output=True, text=True, timeout=600)
    assert summary.returncode == 0, summary.stderr[-4000:]
    assert not checkpoint.parent.exists()


def test_unreadable_checkpoint_stops_the_cli_with_exit_2_and_names_the_file(
        uninterrupted_run, tmp_path, monkeypatch, capsys):
    from pipeline.runs.train import main as train_main

    checkpoint = tmp_path / "checkpoints" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 truncated zip, not a checkpoint")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(SystemExit) as exit_:
        train_main(train_argv(uninterrupted_run, tmp_path / "out", checkpoint.parent))
    message = capsys.readouterr().err
    assert exit_.value.code == 2
    assert str(checkpoint) in message and "cannot be read" in message
    assert "Traceback" not in message and not (tmp_path / "out" / "metrics.json").exists()
    assert checkpoint.read_bytes().startswith(b"PK\x03\x04 truncated")   # left for the user


# ---- faults after training (issue 19): nothing retrains, one MLflow run, each step once ---------
def assert_one_complete_run(tracking, experiment: str, reference_dir: Path, run_id: str) -> None:
    """The job's MLflow run is the experiment's only run, FINISHED, with its params and every
    logged value once: the same history as the uninterrupted run's."""
    [run] = tracking.search_runs([tracking.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == str(STUDY["train"]["steps"])
    [reference] = mlflow_runs(reference_dir)
    assert set(run.data.metrics) == set(reference.data.metrics)
    for key in reference.data.metrics:
        history = sorted((m.step, m.value) for m in tracking.get_metric_history(run_id, key))
        expected = sorted((m.step, m.value) for m in client(reference_dir).get_metric_history(
            reference.info.run_id, key))
        assert history == expected, key


def test_a_job_killed_after_its_last_step_before_snakemake_recorded_it_does_not_retrain(
        uninterrupted_run, tmp_path):
    """Killed during interpreter exit (after "done", before Snakemake recorded the job): the
    rerun finds the outputs incomplete, and the job resumes at its last step."""
    workdir = tmp_path
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    shutil.copytree(uninterrupted_run / "data", workdir / "data")
    log = workdir / "logs/resume/train/digits-10-fixmatch-seed0.log"
    # --nolock: the kill leaves no lock to remove (`snakemake --unlock`) before the rerun
    snakemake = subprocess.Popen([*SNAKEMAKE[:-1], "--nolock", "--", TARGET], cwd=workdir,
                                 env=workflow_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (log.exists() and ": done; " in log.read_text()):
        assert snakemake.poll() is None and time.monotonic() < deadline, "no 'done' line"
        time.sleep(0.002)
    os.killpg(snakemake.pid, signal.SIGKILL)   # the job is still exiting: nothing recorded it
    snakemake.wait(timeout=60)
    assert (workdir / TARGET).exists()   # every output written, not yet accepted
    run_id = json.loads((workdir / RUN_DIR / "run.json").read_text())["mlflow_run_id"]

    rerun = subprocess.run([*SNAKEMAKE, TARGET], cwd=workdir, env=workflow_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    steps = STUDY["train"]["steps"]   # (no rerun at all: Snakemake recorded it before the kill)
    assert f"resumed from checkpoint at step {steps}/{steps}" in log.read_text()
    assert without_commit(json.loads((workdir / TARGET).read_text())) == without_commit(
        json.loads((uninterrupted_run / TARGET).read_text()))
    assert json.loads((workdir / RUN_DIR / "run.json").read_text())["mlflow_run_id"] == run_id
    assert_one_complete_run(client(workdir), STUDY["study"]["name"], uninterrupted_run, run_id)


class TrackingServer:
    """A real `mlflow server` on a free local port, over a SQLite file: stopped and started."""

    def __init__(self, workdir: Path):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.workdir, self.process = workdir, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import urllib.request

        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                   f"sqlite:///{self.workdir}/server.db", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        self.process = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)   # as a crash: nothing gets to finish
        self.process.wait(timeout=60)


def test_a_tracking_server_that_dies_mid_run_costs_no_training_and_no_value(uninterrupted_run,
                                                                          tmp_path):
    from mlflow.tracking import MlflowClient

    server = TrackingServer(tmp_path)
    server.start()
    # no HTTP retries: each failed request fails at once (the job's own retry is under test)
    env = {**workflow_env(), "MLFLOW_TRACKING_URI": server.uri, "SSL_REPRO_TRACKING_WAIT": "2",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    command = [sys.executable, "-m", "pipeline.runs.train",
               *train_argv(uninterrupted_run, tmp_path / "out", tmp_path / "checkpoints")]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output = []
    for line in job.stdout:
        output.append(line)
        if "step 25/" in line:
            server.stop()
            stopped = time.monotonic()
            break
    output.append(job.communicate(timeout=300)[0])
    text = "".join(output)
    # Training went on to its end, then the job stopped within seconds with one paragraph.
    assert job.returncode == 2, text[-4000:]
    assert time.monotonic() - stopped < 60 and "Traceback" not in text
    assert "training goes on" in text and "has not answered since step" in text
    assert "checkpoints/checkpoint.pt is kept" in " ".join(text.split())
    assert not (tmp_path / "out" / "metrics.json").exists()
    steps = STUDY["train"]["steps"]
    assert torch.load(tmp_path / "checkpoints" / "checkpoint.pt", weights_only=False)[
        "step"] == steps

    server.start()
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    try:
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        assert f"resumed from checkpoint at step {steps}/{steps}" in rerun.stdout
        assert without_commit(json.loads((tmp_path / "out" / "metrics.json").read_text())) == \
            without_commit(json.loads((uninterrupted_run / TARGET).read_text()))
        run_id = json.loads((tmp_path / "out" / "run.json").read_text())["mlflow_run_id"]
        assert_one_complete_run(MlflowClient(server.uri), STUDY["study"]["name"],
                                uninterrupted_run, run_id)
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs the right to mount: root here; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` but for about `leave` bytes; returns the filler file (delete it to free)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:   # no space left
            pass
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def run_train(workdir: Path, out: Path, checkpoints: Path, capsys) -> tuple[int, str]:
    from pipeline.runs.train import main as train_main

    try:
        train_main(train_argv(workdir, out, checkpoints))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def the_run(store: Path):
    [run] = mlflow_runs(store)
    return run


@pytest.mark.parametrize("full", ["outputs", "checkpoints"])
def test_a_full_disk_stops_the_job_with_one_paragraph_and_the_rerun_completes(
        uninterrupted_run, tmp_path, small_disk, monkeypatch, capsys, full):
    monkeypatch.chdir(tmp_path)
    # absolute: MLflow keeps a process's store per URI, and the fixture's is sqlite:///mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = small_disk / "out" if full == "outputs" else tmp_path / "out"
    checkpoints = small_disk / "checkpoints" if full == "checkpoints" else tmp_path / "checkpoints"
    # checkpoints: the run record fits, a checkpoint does not; outputs: train_stats.csv does not
    fill(small_disk, leave=16384 if full == "checkpoints" else 8192)
    code, message = run_train(uninterrupted_run, out, checkpoints, capsys)
    assert code == 2 and "Traceback" not in message, message
    assert "No space left" in message
    if full == "checkpoints":
        assert "cannot write the checkpoint" in message and "Free some space" in message
    else:
        assert "train_stats.csv" in message and "free space on the file system" in message
    assert the_run(tmp_path).info.status == "FAILED"   # not left RUNNING
    assert not list(small_disk.rglob(".*.tmp*"))       # no half file anywhere
    assert not (out / "metrics.json").exists()
    (small_disk / "filler").unlink()
    code, message = run_train(uninterrupted_run, out, checkpoints, capsys)
    assert code == 0, message
    if full == "outputs":   # trained to the end before the disk stopped it: no step again
        steps = STUDY["train"]["steps"]
        assert f"resumed from checkpoint at step {steps}/{steps}" in message
    assert without_commit(json.loads((out / "metrics.json").read_text())) == without_commit(
        json.loads((uninterrupted_run / TARGET).read_text()))
    assert_one_complete_run(client(tmp_path), STUDY["study"]["name"], uninterrupted_run,
                            the_run(tmp_path).info.run_id)


def test_a_full_disk_under_the_mlflow_store_costs_no_value(small_disk, tmp_path, monkeypatch):
    from pipeline.errors import UserError
    from pipeline.runs.tracking import RunLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{small_disk}/mlflow.db")
    monkeypatch.setenv("SSL_REPRO_TRACKING_WAIT", "0")
    monkeypatch.setattr("pipeline.runs.tracking.RETRY_EVERY", 0.0)
    logger = RunLogger("exp", "run", tmp_path / "mlflow_run.json", {}, {})
    rows = [{"step": float(step), "train/loss": step / 7} for step in range(1, 301)]
    logger.log_metrics(1, {"train/loss": rows[0]["train/loss"]})
    filler = fill(small_disk)
    for row in rows[1:]:   # training goes on
        logger.log_metrics(int(row["step"]), {"train/loss": row["train/loss"]})
    assert logger.failed_writes
    with pytest.raises(UserError) as error:
        logger.sync(rows, resumed_from=0, checkpoint=tmp_path / "checkpoint.pt")
    message = " ".join(str(error.value).split())
    assert "disk is full" in message and "(or free its disk)" in message
    filler.unlink()   # the user frees space; the rerun's sync logs every value once
    logger.sync(rows, resumed_from=0)
    history = logger.tracking.get_metric_history(logger.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(int(r["step"]), r["train/loss"])
                                                          for r in rows]
