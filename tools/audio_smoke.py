"""The audio smoke study's inputs (configs/usb-audio-smoke.yaml), made here rather than
downloaded: a folder of synthetic tones, one class per frequency, as WAV files, and a tiny
randomly initialised HuBERT (2 layers, 16 wide) saved with save_pretrained, which the study loads
through the same path as the real facebook/hubert-base-ls960.

    uv run python tools/audio_smoke.py        # writes data/usb-audio-smoke/{tones,tiny-hubert}
    uv run snakemake --cores 2 --configfile configs/usb-audio-smoke.yaml
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from semisup.data.wav import wav_bytes

TINY_SPEECH = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                   num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
FOLDER = Path("data/usb-audio-smoke")   # relative to the project folder, as the config names it


def save_tiny_speech_model(folder: Path, kind: str = "hubert_base", seed: int = 0) -> Path:
    """A randomly initialised 2-layer HuBERT (kind "hubert_base") or wav2vec2 saved in folder."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    config_class, model_class = {"hubert_base": (HubertConfig, HubertModel),
                                 "wav2vec2_base": (Wav2Vec2Config, Wav2Vec2Model)}[kind]
    torch.manual_seed(seed)
    model_class(config_class(**TINY_SPEECH)).save_pretrained(folder)
    return folder


def write_tones(folder: Path, sample_rate: int = 16000, per_class: int = 8,
                frequencies: tuple[int, ...] = (200, 800), seconds: float = 0.25) -> Path:
    """<folder>/<frequency>hz/<n>.wav: noisy sine tones of 0.6 to 1.4 x seconds."""
    rng = np.random.default_rng(0)
    for frequency in frequencies:
        (folder / f"{frequency}hz").mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            length = int(sample_rate * seconds * (0.6 + 0.8 * rng.random()))
            time = np.arange(length) / sample_rate
            tone = 0.4 * np.sin(2 * math.pi * frequency * time + rng.random() * 2 * math.pi)
            tone += 0.02 * rng.standard_normal(length)
            (folder / f"{frequency}hz" / f"{number}.wav").write_bytes(wav_bytes(tone, sample_rate))
    return folder


def make_smoke_inputs(root: Path) -> None:
    """The tones and the tiny HuBERT under root/data/usb-audio-smoke/."""
    write_tones(root / FOLDER / "tones")
    save_tiny_speech_model(root / FOLDER / "tiny-hubert")


if __name__ == "__main__":
    make_smoke_inputs(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
    print(f"wrote {FOLDER}/tones and {FOLDER}/tiny-hubert")
