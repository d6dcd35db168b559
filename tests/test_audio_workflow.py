"""End to end on the audio modality: configs/usb-audio-smoke.yaml (a tiny HuBERT made by
tools/audio_smoke.py, on its synthetic tones) through Snakemake, MLflow and the tables, with
the algorithms unchanged (supervised, FixMatch, Mean Teacher)."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from audio_smoke import make_smoke_inputs   # tools/audio_smoke.py
from conftest import snakemake
from pipeline.config import ROOT

pytestmark = pytest.mark.slow
CONFIG = ROOT / "configs/usb-audio-smoke.yaml"


@pytest.fixture(scope="module")
def audio_study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("audio-study")
    shutil.copy(CONFIG, workdir / "smoke.yaml")
    make_smoke_inputs(workdir)
    result = snakemake(workdir, "--cores", "2", "--configfile", "smoke.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_the_audio_study_writes_its_table_for_every_algorithm(audio_study):
    table = (audio_study / "reports/usb-audio-smoke/tables/main.tex").read_text()
    for name in ("Supervised", "FixMatch", "Mean Teacher"):
        assert name in table
    metrics = json.loads((audio_study / "reports/usb-audio-smoke/metrics.json").read_text())
    assert set(metrics["audio_folder-4"]) == {"supervised", "fixmatch", "meanteacher"}


def test_each_run_records_the_audio_settings_and_the_waveform_shapes(audio_study):
    config = yaml.safe_load(CONFIG.read_text())
    run = json.loads((audio_study / "results/usb-audio-smoke/audio_folder-4/fixmatch/seed0/"
                                    "metrics.json").read_text())["run"]
    assert run["model"] == "hubert_base" and run["train"]["optimizer"] == "adamw"
    assert run["train"]["audio"]["max_length_seconds"] == config["audio"]["max_length_seconds"]
    assert run["train"]["audio"]["strong"]["reverb"] == "freeverb_ir"
    assert "horizontal_flip" not in run["train"]   # an image setting: not in audio runs
    manifest = json.loads(next((audio_study / "data/raw/audio_folder").rglob("manifest.json"))
                          .read_text())
    assert manifest["class_names"] == ["200hz", "800hz"]
    assert manifest["shapes"]["train_waveforms"][0] == 12


def test_every_audio_run_is_a_finished_mlflow_run(audio_study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{audio_study}/mlflow.db")
    experiment = client.get_experiment_by_name("usb-audio-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["algorithm"] for r in runs) == ["fixmatch", "meanteacher",
                                                              "supervised"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "ema/error")] == [3, 6]
        assert json.loads(run.data.params["train.audio"])["pad_to"] == "max_length"


def test_a_second_audio_run_does_nothing(audio_study):
    result = snakemake(audio_study, "--cores", "1", "--configfile", "smoke.yaml", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr
