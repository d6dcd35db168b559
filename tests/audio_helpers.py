"""What the audio tests share: tiny HuBERT and wav2vec2 models saved as save_pretrained folders
(loaded through the real path, as a downloaded model is), and folders of synthetic tones."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from semisup.data.wav import wav_bytes

TINY_SPEECH = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                   num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)


def save_tiny_speech_model(folder: Path, kind: str, seed: int = 0) -> Path:
    """A randomly initialised 2-layer HuBERT (kind "hubert_base") or wav2vec2 saved in folder."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    config_class, model_class = {"hubert_base": (HubertConfig, HubertModel),
                                 "wav2vec2_base": (Wav2Vec2Config, Wav2Vec2Model)}[kind]
    torch.manual_seed(seed)
    model_class(config_class(**TINY_SPEECH)).save_pretrained(folder)
    return folder


def write_tones(folder: Path, sample_rate: int, per_class: int = 8,
                frequencies: tuple[int, ...] = (200, 800), seconds: float = 0.25) -> Path:
    """<folder>/<frequency>hz/<n>.wav: noisy sine tones, one class per frequency."""
    rng = np.random.default_rng(0)
    for frequency in frequencies:
        (folder / f"{frequency}hz").mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            length = int(sample_rate * seconds * (0.6 + 0.8 * rng.random()))
            time = np.arange(length) / sample_rate
            tone = 0.4 * np.sin(2 * math.pi * frequency * time + rng.random() * 6.28)
            tone += 0.02 * rng.standard_normal(length)
            (folder / f"{frequency}hz" / f"{number}.wav").write_bytes(wav_bytes(tone, sample_rate))
    return folder
