"""Bad input stops a run with one paragraph naming the problem and the fix, a non-zero exit, no
Python traceback, and every finished result left as it was.

A tiny study is finished first (in this process: the rules' own commands); then each bad input
is tried against it, through `snakemake` for the config and the environment, and through the
rules' command-line tools (called in this process) for the files they read and write."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT, RunConfig, deep_merge, load_params, load_study
from pipeline.data import download, split
from pipeline.errors import UserError
from pipeline.runs import train

STUDY = {
    "study": {"name": "bad", "n_labels": [10], "seeds": [0, 1], "algorithms": ["fixmatch"]},
    "models": {"small_cnn": {"width": 4}},
    "train": {"steps": 6, "batch_size": 4, "uratio": 2, "eval_every": 3, "log_every": 3,
              "checkpoint_every": 3, "last_k": 2, "eval_batch_size": 512,
              # training runs in this process, where torch is imported already
              "portable_numerics": False},
}
DEFAULT = load_study(load_params(ROOT / "params.yaml"))   # digits' options: this study's
MANIFEST = Path(DEFAULT.manifest_path("digits"))
SPLIT = Path(DEFAULT.split_path("digits", 10, 0))
RUN_DIR = Path("results/bad/digits-10/fixmatch/seed0")
CHECKPOINTS = Path("checkpoints/bad/run")
UNREACHABLE = "http://127.0.0.1:9"   # the discard port: nothing listens there


def run_config(**train) -> RunConfig:
    study = load_study(deep_merge(load_params(ROOT / "params.yaml"), STUDY))
    config = study.run_config("digits", 10, "fixmatch", 0)
    return replace(config, train={**config.train, **train})


def train_argv(workdir: Path, config: RunConfig | None = None, data: Path | None = None,
               out: Path | None = None, device: str = "cpu") -> list[str]:
    data = data or workdir
    return ["--run-config", (config or run_config()).to_json(),
            "--manifest", str(data / MANIFEST), "--split", str(data / SPLIT),
            "--out", str(out or workdir / RUN_DIR), "--checkpoint-dir", str(workdir / CHECKPOINTS),
            "--device", device]


def snapshot(workdir: Path) -> dict[str, str]:
    """sha256 of every finished result and data file (not the run config files a starting
    workflow writes: what the runs are, not work done)."""
    return {str(path.relative_to(workdir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("data", "results", "checkpoints") for path in
            sorted((workdir / folder).rglob("*"))
            if path.is_file() and path.parent.name != "run_configs"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (seed 0) of the tiny study, and the hashes of its files."""
    workdir = tmp_path_factory.mktemp("finished")
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    options = json.dumps(run_config().dataset_options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
        download.main(["--dataset", "digits", "--options", options,
                       "--manifest", str(workdir / MANIFEST)])
        split.main(["--manifest", str(workdir / MANIFEST), "--n-labels", "10", "--seed", "0",
                    "--out", str(workdir / SPLIT)])
        train.main(train_argv(workdir))
    assert (workdir / RUN_DIR / "metrics.json").exists()
    return workdir, snapshot(workdir)


def paragraph(stderr: str) -> str:
    """The error paragraph, unwrapped: from 'ssl-repro error:' to a blank line or to what
    Snakemake prints after a failed command."""
    assert stderr.count("ssl-repro error:") == 1, stderr
    text = stderr[stderr.index("ssl-repro error:"):].split("\n\n")[0]
    text = text.split("\nCalledProcessError")[0]
    return " ".join(text.split())


def check_user_error(code, stderr: str, finished, *expected: str) -> None:
    workdir, files = finished
    assert code not in (0, None)
    assert "Traceback" not in stderr, stderr
    message = paragraph(stderr)
    print(message)   # shown with `pytest -rP`
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    assert snapshot(workdir) == files   # every finished result kept, unchanged


def call(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run a rule's CLI in this process, as its process would: exit code and stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


# ---- through snakemake: the config and the environment -----------------------------------------
# (bad part of the config, what the message must say: the problem ... and the fix)
BAD_CONFIGS = {
    "unknown key": ({"train": {"stpes": 5}},
                    ["unknown key train.'stpes'", "did you mean 'steps'?", "Fix the value(s)"]),
    "wrong type": ({"train": {"lr": "fast"}},
                   ["train.lr = 'fast' is not allowed", "it must be a number"]),
    "unknown algorithm": ({"study": {"algorithms": ["fixmath"]}},
                          ["study.algorithms.0 = 'fixmath'", "(did you mean 'fixmatch'?)",
                           "it must be one of '"]),   # the list grows with the registry
    "unknown dataset": ({"study": {"dataset": "mnist"}},
                        ["study.dataset = 'mnist'", "one of 'digits', 'digits_rgb32', 'cifar10'"]),
    "n_labels not a multiple of the classes": (
        {"study": {"n_labels": [25]}}, ["n_labels contains 25", "10 classes", "use e.g. 20"]),
    "zero steps": ({"train": {"steps": 0}}, ["train.steps = 0 is not allowed", ">= 1"]),
    "negative batch size": ({"train": {"batch_size": -4}},
                            ["train.batch_size = -4 is not allowed", ">= 1"]),
}
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--cores", "1"]


@pytest.fixture(scope="module")
def snakemake_runs(finished) -> dict[str, subprocess.CompletedProcess]:
    """Every bad config (and an unreachable MLflow server) through snakemake, all at once."""
    workdir, _ = finished
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    jobs = {}
    for number, (name, (bad, _)) in enumerate(BAD_CONFIGS.items()):
        configfile = workdir / f"bad{number}.yaml"
        configfile.write_text(yaml.safe_dump(deep_merge(STUDY, bad)))
        jobs[name] = subprocess.Popen([*SNAKEMAKE, "--configfile", configfile.name], cwd=workdir,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    # A key given twice: Snakemake's own reading would keep the last value silently.
    (workdir / "twice.yaml").write_text(yaml.safe_dump(STUDY) + "study:\n  seeds: [0]\n")
    jobs["key given twice"] = subprocess.Popen(
        [*SNAKEMAKE, "--configfile", "twice.yaml"], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A valid config, but the tracking server is down; seed 1 still has to be trained.
    jobs["unreachable MLflow"] = subprocess.Popen(
        [*SNAKEMAKE, "--configfile", "study.yaml", "--",
         "results/bad/digits-10/fixmatch/seed1/metrics.json"],
        cwd=workdir, env={**env, "MLFLOW_TRACKING_URI": UNREACHABLE},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_stops_snakemake_before_any_job(snakemake_runs, finished, name):
    result = snakemake_runs[name]
    check_user_error(result.returncode, result.stderr, finished, *BAD_CONFIGS[name][1],
                     "pipeline/params.schema.yaml")
    assert "Building DAG" not in result.stderr   # stopped while reading the config


def test_a_config_file_with_a_key_given_twice_stops_snakemake_before_any_job(snakemake_runs,
                                                                            finished):
    result = snakemake_runs["key given twice"]
    dumped = yaml.safe_dump(STUDY).splitlines()
    first, second = dumped.index("study:") + 1, len(dumped) + 1
    check_user_error(result.returncode, result.stderr, finished, "twice.yaml: the key 'study' is "
                     f"given twice in one mapping (lines {first} and {second})", "Keep one of them")
    assert "Building DAG" not in result.stderr


def test_unreachable_mlflow_server_stops_snakemake_in_seconds(snakemake_runs, finished):
    result = snakemake_runs["unreachable MLflow"]
    check_user_error(result.returncode, result.stderr, finished,
                     f"cannot reach the MLflow tracking server '{UNREACHABLE}'",
                     "Connection refused", "fix MLFLOW_TRACKING_URI", "unset it")
    workdir, _ = finished
    assert not (workdir / "results/bad/digits-10/fixmatch/seed1").exists()


# ---- through the rules' tools: the files they read and write -----------------------------------
@pytest.fixture
def data_copy(finished, tmp_path) -> Path:
    """The finished study's data, to damage without touching the original."""
    workdir, _ = finished
    shutil.copytree(workdir / "data", tmp_path / "data")
    return tmp_path


def test_n_labels_larger_than_the_training_set(finished, tmp_path, capsys):
    workdir, _ = finished
    code, stderr = call(split.main, ["--manifest", str(workdir / MANIFEST), "--n-labels", "20000",
                                     "--seed", "0", "--out", str(tmp_path / "split.json")], capsys)
    check_user_error(code, stderr, finished, "n_labels=20000 asks for 2000 images of class 0",
                     "the training set has only", "use a smaller n_labels")
    assert not (tmp_path / "split.json").exists()


def test_missing_manifest(finished, tmp_path, capsys):
    manifest = tmp_path / MANIFEST
    code, stderr = call(split.main, ["--manifest", str(manifest), "--n-labels", "10",
                                     "--seed", "0", "--out", str(tmp_path / "split.json")], capsys)
    check_user_error(code, stderr, finished, f"the dataset manifest {manifest} is missing",
                     "rerun snakemake to recreate it")


def test_corrupt_raw_data_file_fails_its_checksum(finished, data_copy, capsys):
    raw = data_copy / MANIFEST.with_name("digits.npz")
    corrupt = bytearray(raw.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF   # one flipped byte
    raw.write_bytes(bytes(corrupt))
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, f"the raw data file {raw} does not match its sha256",
                     "(corrupt or changed)", f"delete {raw}", "rerun snakemake to download it again")


def test_missing_raw_data_file(finished, data_copy, capsys):
    raw = data_copy / MANIFEST.with_name("digits.npz")
    raw.unlink()
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, f"the raw data file {raw}", "is missing",
                     "rerun snakemake to download it again")


def test_split_file_edited_by_hand(finished, data_copy, capsys):
    split_file = data_copy / SPLIT
    edited = json.loads(split_file.read_text())
    edited["labeled_indices"][0] += 1
    split_file.write_text(json.dumps(edited))
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, str(split_file),
                     "the labeled indices do not match their sha256", "edited by hand",
                     "Delete it and rerun snakemake")


def test_split_file_that_is_not_json(finished, data_copy, capsys):
    split_file = data_copy / SPLIT
    split_file.write_text('{"labeled_indices": [1, 2,')   # cut off
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, f"the split file {split_file} is not valid JSON",
                     "delete it and rerun snakemake")


def test_split_made_from_other_raw_data(finished, data_copy, capsys):
    split_file = data_copy / SPLIT
    split_data = json.loads(split_file.read_text())
    split_data["dataset_digest"] = "0" * 64
    split_file.write_text(json.dumps(split_data))
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, "was made from other raw data",
                     "delete the split and rerun snakemake")


def test_unwritable_output_folder_fails_before_training(finished, tmp_path, capsys):
    # A folder below a regular file cannot be created, even by root (chmod does not stop root).
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = blocker / "results"
    code, stderr = call(train.main, train_argv(finished[0], out=out), capsys)
    check_user_error(code, stderr, finished, f"cannot create or write the folder {out}",
                     "make it writable or choose another output location")
    assert "device" not in capsys.readouterr().out   # stopped before the run started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(finished, tmp_path, capsys):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, stderr = call(train.main, train_argv(finished[0], out=out), capsys)
    finally:
        out.chmod(0o700)
    check_user_error(code, stderr, finished, f"cannot create or write the folder {out}",
                     "Permission denied", "make it writable")


def test_gpu_asked_for_where_none_exists(finished, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, stderr = call(train.main, train_argv(finished[0], device="cuda"), capsys)
    check_user_error(code, stderr, finished,
                     "train.device is 'cuda' (set in params.yaml) but no CUDA GPU is available",
                     "set train.device to 'auto' or 'cpu' in params.yaml")


def test_unreachable_mlflow_server_stops_the_training_job_and_keeps_results(
        finished, monkeypatch, capsys):
    """After waiting SSL_REPRO_TRACKING_WAIT for it (a server that restarts comes back)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    monkeypatch.setenv("SSL_REPRO_TRACKING_WAIT", "1")
    workdir, _ = finished
    code, stderr = call(train.main, train_argv(workdir), capsys)
    check_user_error(code, stderr, finished, "cannot reach the MLflow tracking server",
                     "fix MLFLOW_TRACKING_URI")
    assert "waiting up to 1 s (SSL_REPRO_TRACKING_WAIT) for the MLflow tracking server" in stderr



def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    from pipeline.files import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    leftover = tmp_path / f".main.{dead}.tmp.tex"   # as atomic_path names it
    leftover.write_text("half a table")
    running = tmp_path / ".main.1.tmp.tex"   # pid 1 runs: a write in progress elsewhere
    running.write_text("being written")
    write_text(tmp_path / "main.tex", "a table")
    assert (tmp_path / "main.tex").read_text() == "a table"
    assert not leftover.exists() and running.exists()


@pytest.mark.parametrize("edit", ["drop digest", "drop shapes", "other files"])
def test_a_manifest_that_the_download_rule_did_not_write(finished, data_copy, capsys, edit,
                                                         monkeypatch):
    from pipeline.workflow.inputs import check_existing_inputs

    manifest_file = data_copy / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    if edit == "other files":
        manifest["files"]["extra.npz"] = "0" * 64   # the digest no longer matches
    else:
        del manifest[edit.split()[1]]
    manifest_file.write_text(json.dumps(manifest))
    expected = [f"the dataset manifest {manifest_file} is not one that the download rule wrote",
                "Delete it and rerun snakemake"]
    code, stderr = call(train.main, train_argv(finished[0], data=data_copy), capsys)
    check_user_error(code, stderr, finished, *expected)
    # the same check when the Snakefile is read, before Snakemake plans any job
    monkeypatch.chdir(data_copy)
    with pytest.raises(UserError) as error:
        check_existing_inputs(load_study(deep_merge(load_params(ROOT / "params.yaml"), STUDY)))
    assert f"the dataset manifest {MANIFEST} is not one that the download rule wrote" \
        in str(error.value)
