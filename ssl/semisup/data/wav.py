"""Reading WAV files (PCM, 8 to 32 bits, any number of channels) with the standard library's
`wave` module, as float32 mono in [-1, 1) at a chosen sample rate: channels averaged, then
resampled with scipy's polyphase filter (scipy.signal.resample_poly) where the file's rate
differs. No torchaudio, no sox."""
from __future__ import annotations

import io
import wave
from math import gcd

import numpy as np

from .registry import DatasetError

PCM_TYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def pcm_samples(frames: bytes, width: int) -> np.ndarray:
    """Interleaved PCM samples as float64 in [-1, 1)."""
    if width == 3:   # 24-bit little-endian: sign-extend into int32
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = (raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)) << 8 >> 8
        return values / float(1 << 23)
    values = np.frombuffer(frames, dtype=np.dtype(PCM_TYPES[width]).newbyteorder("<"))
    if width == 1:   # 8-bit WAV is unsigned
        return (values.astype(np.float64) - 128) / 128
    return values.astype(np.float64) / float(1 << (8 * width - 1))


def resampled(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    common = gcd(rate, target_rate)
    return resample_poly(samples, target_rate // common, rate // common)


def read_wav(data: bytes, sample_rate: int, dataset: str, where: str) -> np.ndarray:
    """A WAV file's bytes as float32 mono at `sample_rate`."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as error:
        raise DatasetError(f"{dataset}: {where} is not a PCM WAV file the `wave` module reads "
                           f"({error}); convert it to PCM WAV or remove it") from error
    if width not in (1, 2, 3, 4):
        raise DatasetError(f"{dataset}: {where} has {8 * width}-bit samples; PCM WAV of 8, 16, "
                           f"24 or 32 bits is read")
    samples = pcm_samples(frames, width).reshape(-1, channels).mean(axis=1)
    return resampled(samples, rate, sample_rate).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """float samples in [-1, 1] as a 16-bit mono PCM WAV file (for tests and small examples)."""
    pcm = np.clip(np.round(np.asarray(samples) * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()
