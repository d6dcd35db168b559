"""USB's audio studies (configs/usb-audio-*.yaml): each task's label budgets, network, learning
rate, layer decay and clip length as semilearn 0.3.2's config/usb_audio/ sets them, every
registered algorithm that runs on audio (not MixMatch and ReMixMatch: USB mixes pooled features
there, ours mixes inputs), 3 seeds; `snakemake -n` plans every algorithm x budget x seed offline."""
import re
import subprocess
import sys

import pytest

from pipeline.config import ROOT, load_params, load_study
from semisup.catalog import algorithm_cards

CONFIGS = ROOT / "configs"
USB_AUDIO = {
    # task: (label budgets, network, lr, layer decay, max_length_seconds)
    "esc50": ([250, 500], "hubert_base", 1e-4, 0.85, 5.0),
    "fsdnoisy": ([1773], "hubert_base", 5e-4, 0.75, 5.0),
    "urbansound8k": ([100, 400], "hubert_base", 5e-5, 0.75, 4.0),
    "gtzan": ([100, 400], "wav2vec2_base", 2e-5, 1.0, 3.0),
    "superbks": ([50, 100], "wav2vec2_base", 5e-5, 0.75, 1.0),
}
NOT_ON_AUDIO: set[str] = set()   # every algorithm (MixMatch, ReMixMatch: MixUp of features)
HUB = {"hubert_base": "facebook/hubert-base-ls960", "wav2vec2_base": "facebook/wav2vec2-base-960h"}


def study_of(task: str):
    path = CONFIGS / f"usb-audio-{task}.yaml"
    return load_study(load_params(ROOT / "params.yaml", path), source=str(path))


@pytest.mark.parametrize("task", sorted(USB_AUDIO))
def test_usb_audio_study_runs_every_algorithm_that_runs_on_audio_with_usbs_protocol(task):
    config = study_of(task).config
    budgets, model, lr, layer_decay, seconds = USB_AUDIO[task]
    study = config["study"]
    assert (study["name"], study["dataset"], study["n_labels"], study["model"], study["seeds"]) == (
        f"usb-audio-{task}", task, budgets, model, [0, 1, 2])
    assert sorted(study["algorithms"]) == sorted(set(algorithm_cards()) - NOT_ON_AUDIO)
    assert config["models"][model]["pretrained"] == HUB[model]
    train = config["train"]
    assert (train["steps"], train["batch_size"], train["uratio"], train["optimizer"]) == (
        102400, 8, 1, "adamw")
    assert (train["lr"], train["layer_decay"], train["weight_decay"]) == (lr, layer_decay, 2e-5)
    assert (train["lr_warmup_steps"], train["eval_every"], train["ema_decay"]) == (5120, 2048, 0.0)
    assert config["audio"]["max_length_seconds"] == seconds
    overrides = config["algorithm_overrides"]   # params.yaml's mu = 1 ones too: uratio is 1
    assert {name for name, values in overrides.items() if "ema_decay" in values} == {
        "meanteacher", "simmatch"}
    assert all(values.get("uratio", 1) == 1 for values in overrides.values())
    assert config["algorithms"]["crmatch"]["lambda_rot"] == 0.0
    assert config["algorithms"]["comatch"]["queue_batches"] == 128
    # semilearn's config/usb_audio/{mixmatch,remixmatch}: mixup_manifold True, rot_loss_ratio 0
    assert config["algorithms"]["mixmatch"] == {"T": 0.5, "mixup_alpha": 0.5, "lambda_u": 10.0,
                                                "rampup_fraction": 0.4, "mixup_space": "by_modality",
                                                "mixed_features_gradient": "none"}
    assert config["algorithms"]["remixmatch"] == {
        "T": 0.5, "mixup_alpha": 0.75, "lambda_u": 1.5, "lambda_pre_mixup": 0.5, "lambda_rot": 0.0,
        "rampup_fraction": 0.015625, "alignment_momentum": 0.999, "mixup_space": "by_modality",
        "mixed_features_gradient": "none"}
    assert config["reports"]["published"] == "reference/published_usb_audio.csv"


def test_an_audio_runs_config_holds_the_audio_settings_and_its_ema_override():
    study = study_of("esc50")
    run = study.run_config("esc50", 250, "meanteacher", 0)
    assert run.train["ema_decay"] == 0.999 and run.train["audio"]["max_length_seconds"] == 5.0
    assert "horizontal_flip" not in run.train
    assert study.run_config("esc50", 250, "fixmatch", 0).train["ema_decay"] == 0.0


def problem_with(change) -> str:
    from pipeline.errors import ConfigError

    config = load_params(ROOT / "params.yaml", CONFIGS / "usb-audio-smoke.yaml")
    change(config)
    with pytest.raises(ConfigError) as error:
        load_study(config, source="smoke.yaml")
    return str(error.value)


def test_an_audio_dataset_with_an_image_network_is_refused_before_any_job():
    message = problem_with(lambda c: c["study"].update(model="small_cnn"))
    assert "study.dataset audio_folder is audio but study.model small_cnn does not take " \
           "waveforms; set study.model to one of hubert_base, wav2vec2_base" in message
    message = problem_with(lambda c: c["study"].update(dataset="digits", n_labels=[10]))
    assert "study.model hubert_base takes waveforms but study.dataset digits is not audio" in message


def test_an_audio_folder_without_a_path_is_refused():
    message = problem_with(lambda c: c["datasets"]["audio_folder"].update(path=None))
    assert "datasets.audio_folder.path is null; set it to a folder with one sub-folder of WAV " \
           "files per class" in message


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(USB_AUDIO))
def test_usb_audio_study_dry_runs_offline_every_algorithm_budget_and_seed(task, tmp_path):
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                             str(ROOT / "Snakefile"), "--configfile",
                             str(CONFIGS / f"usb-audio-{task}.yaml"), "--cores", "2",
                             "--dry-run", "--quiet", "rules"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    budgets = len(USB_AUDIO[task][0])
    algorithms = len(algorithm_cards()) - len(NOT_ON_AUDIO)
    assert counts["train"] == str(budgets * algorithms * 3)
    assert counts["evaluate"] == str(budgets * algorithms)
    assert counts["download"] == "1" and counts["split"] == str(budgets * 3)
