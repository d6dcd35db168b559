"""An audio run (tiny HuBERT, SpecAugment masks and dropout on, the strong audio views) killed
after a checkpoint and resumed ends bit for bit where the uninterrupted run ends; VAT perturbs
the waveforms and trains."""
from __future__ import annotations

import json
import math

import pytest
import torch

from semisup.algorithms import build_algorithm
from semisup.data.audio import AudioAugment, AudioData, audio_train_data, ragged
from semisup.models import build_network
from semisup.train import Trainer

from audio_smoke import save_tiny_speech_model   # tools/audio_smoke.py
from pipeline.config import default_params, default_train_options
from pipeline.runs.train import train_config

CPU = torch.device("cpu")
RATE = 4000
CONFIG = train_config(default_train_options(
    "audio_folder", steps=6, batch_size=2, uratio=1, eval_every=2, log_every=2,
    checkpoint_every=2, last_k=2, ema_decay=0.9, optimizer="adamw", lr=1e-3, layer_decay=0.8,
    lr_warmup_steps=1, weight_decay=2e-5))


class Killed(Exception):
    pass


def tones() -> AudioData:
    generator = torch.Generator().manual_seed(0)
    clips, labels = [], []
    for number in range(12):
        frequency = 300.0 if number % 2 else 900.0
        length = 600 + int(torch.randint(600, (), generator=generator))
        time = torch.arange(length) / RATE
        clips.append(0.4 * torch.sin(2 * torch.pi * frequency * time))
        labels.append(number % 2)
    train, test = ragged(clips[:8]), ragged(clips[8:])
    return AudioData(*train, torch.tensor(labels[:8]), *test, torch.tensor(labels[8:]),
                     class_names=["900hz", "300hz"], sample_rate=RATE)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_speech_model(tmp_path_factory.mktemp("hubert"), "hubert_base")


def trainer(model_folder, checkpoint, log=lambda step, metrics: None, algorithm="fixmatch",
            params=None) -> Trainer:
    data = audio_train_data(tones(), torch.tensor([0, 1, 2, 3]),
                            AudioAugment(max_length_seconds=0.2), CPU)
    torch.manual_seed(0)
    network = build_network("hubert_base", 2, None, pretrained=str(model_folder), dropout=0.1,
                            use_mask=False)
    assert network.backbone.model.config.mask_time_prob > 0   # SpecAugment masks while training
    params = params or {**default_params()["algorithms"]["fixmatch"], "tau": 0.5}
    algorithm = build_algorithm(algorithm, params, facts=data.facts(2), total_steps=CONFIG.steps)
    return Trainer(network, algorithm, data, CONFIG, 0, CPU, log=log, checkpoint_path=checkpoint)


def test_a_resumed_audio_run_ends_exactly_like_an_uninterrupted_one(model_folder, tmp_path):
    whole = trainer(model_folder, tmp_path / "whole.pt").fit()

    def kill(step, metrics):
        if step >= 5:
            raise Killed(step)
    with pytest.raises(Killed):
        trainer(model_folder, tmp_path / "killed.pt", log=kill).fit()
    resumed = trainer(model_folder, tmp_path / "killed.pt").fit()
    assert resumed.resumed_from == 4
    for field in ("metrics", "curve", "stat_history"):
        assert json.dumps(getattr(resumed, field), sort_keys=True) == json.dumps(
            getattr(whole, field), sort_keys=True), field


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_vat_perturbs_the_waveforms_and_keeps_their_mask(model_folder, tmp_path, precision):
    from semisup.algorithms.vat import perturbed_values

    params = {**default_params()["algorithms"]["vat"], "power_iteration_precision": precision,
              "rampup_fraction": 0.0}
    run = trainer(model_folder, tmp_path / "vat.pt", algorithm="vat", params=params)
    (batch,) = run.data.modality.views("unlabeled", torch.tensor([0, 5]), ("weak",),
                                       torch.Generator().manual_seed(0))
    values, as_input = perturbed_values(batch)
    network = run.network
    direction = run.algorithm.adversarial_direction(
        network, values, network(batch).logits, torch.Generator().manual_seed(1), as_input)
    assert direction.shape == batch.waveform.shape
    assert torch.allclose(direction.flatten(1).norm(dim=1), torch.ones(2), atol=1e-4)
    assert as_input(values + direction).mask is batch.mask
    result = run.fit()
    assert result.stat_history and all(math.isfinite(row["train/loss_unsup"]) for row in result.stat_history)


@pytest.mark.parametrize("algorithm", ["mixmatch", "remixmatch"])
def test_mixup_trains_on_audio_mixing_pooled_features_as_usb(model_folder, tmp_path, algorithm):
    """semilearn's usb_audio configs set mixup_manifold: features are mixed, not waveforms."""
    params = {**default_params()["algorithms"][algorithm], "rampup_fraction": 0.0}
    if algorithm == "remixmatch":
        params["lambda_rot"] = 0.0   # rot_loss_ratio of USB's audio configs
    result = trainer(model_folder, tmp_path / f"{algorithm}.pt", algorithm=algorithm,
                     params=params).fit()
    assert result.stat_history and all(
        math.isfinite(row["train/loss_unsup"]) and 0.5 <= row["train/mixup_lambda"] <= 1
        for row in result.stat_history)
