"""Our strong audio augmentation (ssl/semisup/data/wave_augment.py) against the real `sox`, sample
for sample. semilearn 0.3.2's WaveformTransforms (datasets/audio_datasets/datasetbase.py) ran these
effects through torchaudio.sox_effects.apply_effects_tensor, then `rate <sample rate>`:

    ["gain", "-n", f"{A:.5f}"]   A = int(U(-5, 5)) dB
    ["pitch", f"{P:.5f}"]        P = U(-2, 2) cents
    ["speed", f"{S:.5f}"]        S = U(0.5, 2.0)
    ["reverb", "-w"]

Each effect (and five chains) runs here with fixed values on deterministic 16 kHz test signals,
once with our functions (float32, as in training) and once with the `sox` command line on 32-bit
PCM WAV files (no dither, `-D`; sox writes raw 32-bit samples back). The sox command line would
average reverb's two output channels into one (it inserts `channels 1` for a mono file);
torchaudio does not, and semilearn kept the first, so sox is given two output channels after a
reverb and the first is read. Per case and signal it prints the length of both outputs, the
largest absolute difference and the SNR of ours against sox's over their common length, the
correlation of their magnitude spectra (Hann window), and for the steady tone the dominant
frequency of each (parabolic interpolation between FFT bins). The case "sox: `rate` before
reverb" runs sox's reverb at 16 kHz, as ours runs after `speed`, to tell that order apart from
the rest.

    uv run python benchmarks/reference_sox.py            # needs `sox` on PATH (apt-get install sox)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch

from semisup.data.wav import pcm_samples
from semisup.data.wave_augment import StrongAudio, apply_effect

SAMPLE_RATE = 16000
SECONDS = 2.0
TONE_HZ = 997.0
# (name, chain): each step (effect, value) as semilearn passes it to sox
REVERB_AFTER_RATE = ["speed", "1.37000", "rate", str(SAMPLE_RATE), "reverb", "-w"]
CASES = [
    ("gain -n -4", [("gain", -4.0)]),
    ("gain -n 0", [("gain", 0.0)]),
    ("gain -n 3 (clips)", [("gain", 3.0)]),
    ("pitch 2", [("pitch", 2.0)]),
    ("pitch -1.5", [("pitch", -1.5)]),
    ("pitch 100 (outside the range)", [("pitch", 100.0)]),
    ("speed 0.5", [("speed", 0.5)]),
    ("speed 0.8", [("speed", 0.8)]),
    ("speed 1.37", [("speed", 1.37)]),
    ("speed 2", [("speed", 2.0)]),
    ("reverb -w", [("reverb", None)]),
    ("speed 1.37, reverb -w", [("speed", 1.37), ("reverb", None)]),
    ("speed 1.37, reverb -w; sox: `rate` before reverb", [("speed", 1.37), ("reverb", None)]),
    ("reverb -w, gain -n -4", [("reverb", None), ("gain", -4.0)]),
    ("reverb -w, reverb -w", [("reverb", None), ("reverb", None)]),
    ("reverb -w, speed 0.8", [("reverb", None), ("speed", 0.8)]),
]
# sox's arguments where they are not semilearn's for the chain
SOX_ARGUMENTS = {"speed 1.37, reverb -w; sox: `rate` before reverb": REVERB_AFTER_RATE}


def test_signals() -> dict[str, np.ndarray]:
    """Deterministic 2 s test signals at 16 kHz, all within [-1, 1)."""
    time = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    low, high = 100.0, 6000.0   # logarithmic sweep
    rate = np.log(high / low) / SECONDS
    sweep = 0.5 * np.sin(2 * np.pi * low * (np.exp(rate * time) - 1) / rate)
    noise = np.random.default_rng(0).normal(0, 0.2, len(time))
    bursts = np.where((time % 0.5) < 0.12, np.clip(noise, -0.9, 0.9), 0.0)
    harmonics = sum(np.sin(2 * np.pi * 140 * k * time) * np.exp(-((140 * k - 700) / 900) ** 2)
                    for k in range(1, 30))   # a 140 Hz voice with one broad formant at 700 Hz
    syllables = 0.5 * (1 - np.cos(2 * np.pi * 4 * time)) ** 2 / 4   # 4 syllables a second
    speech = 0.6 * syllables * harmonics / np.abs(harmonics).max()
    tone = 0.5 * np.sin(2 * np.pi * TONE_HZ * time)
    return {"sweep": sweep, "noise bursts": bursts, "speech-like AM": speech, "tone 997 Hz": tone}


def quantised(samples: np.ndarray) -> np.ndarray:
    """The samples as 32-bit PCM holds them (what sox reads), back as float64."""
    return np.clip(np.round(samples * 2.0 ** 31), -2 ** 31, 2 ** 31 - 1) / 2.0 ** 31


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.clip(np.round(samples * 2.0 ** 31), -2 ** 31, 2 ** 31 - 1).astype("<i4")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(4)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())


def read_first_channel(path: Path, channels: int) -> np.ndarray:
    """sox's raw 32-bit little-endian output (its 32-bit WAV is WAVE_FORMAT_EXTENSIBLE, which the
    `wave` module does not read)."""
    return pcm_samples(path.read_bytes(), 4).reshape(-1, channels)[:, 0]


def sox_arguments(chain) -> list[str]:
    """semilearn's effect list for the chain, then its `rate`."""
    arguments = []
    for effect, value in chain:
        if effect == "gain":
            arguments += ["gain", "-n", f"{value:.5f}"]
        elif effect == "reverb":
            arguments += ["reverb", "-w"]
        else:
            arguments += [effect, f"{value:.5f}"]
    return [*arguments, "rate", str(SAMPLE_RATE)]


def run_sox(samples: np.ndarray, chain, folder: Path, arguments=None) -> np.ndarray:
    source, target = folder / "in.wav", folder / "out.raw"
    write_wav(source, samples)
    channels = 2 if any(effect == "reverb" for effect, _ in chain) else 1
    command = ["sox", "-D", "-V1", str(source), "-t", "raw", "-b", "32", "-e", "signed-integer",
               "-L", "-c", str(channels), str(target), *(arguments or sox_arguments(chain))]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return read_first_channel(target, channels)


def run_ours(samples: np.ndarray, chain, dtype=torch.float32) -> np.ndarray:
    waves = torch.tensor(samples, dtype=dtype)[None, None]   # (rows, channels, samples)
    lengths = torch.tensor([len(samples)])
    settings = StrongAudio()
    for effect, value in chain:
        draws = {name: torch.tensor([0.0 if value is None else value], dtype=torch.float64)
                 for name in ("gain", "pitch", "speed")}
        waves, lengths = apply_effect(effect, waves, lengths, draws, settings, SAMPLE_RATE)
    return waves[0, 0, :int(lengths[0])].double().numpy()


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = int(np.argmax(spectrum[1:-1])) + 1
    left, middle, right = np.log(spectrum[peak - 1:peak + 2] + 1e-300)
    offset = 0.5 * (left - right) / (left - 2 * middle + right)
    return (peak + offset) * SAMPLE_RATE / len(samples)


def spectrum_correlation(ours: np.ndarray, reference: np.ndarray) -> float:
    window = np.hanning(len(ours))
    return float(np.corrcoef(np.abs(np.fft.rfft(ours * window)),
                             np.abs(np.fft.rfft(reference * window)))[0, 1])


def compared(ours: np.ndarray, reference: np.ndarray, tone: bool) -> dict:
    common = min(len(ours), len(reference))
    ours_part, reference_part = ours[:common], reference[:common]
    error = ours_part - reference_part
    energy = float(np.sum(error ** 2))
    row = {"ours": len(ours), "sox": len(reference),
           "max |diff|": float(np.abs(error).max()),
           "SNR dB": np.inf if energy == 0 else
           10 * np.log10(float(np.sum(reference_part ** 2)) / energy),
           "spectrum r": spectrum_correlation(ours_part, reference_part)}
    if tone:
        row["f ours Hz"] = dominant_frequency(ours_part)
        row["f sox Hz"] = dominant_frequency(reference_part)
    return row


def formatted(row: dict) -> str:
    cells = [str(row["ours"]), str(row["sox"]), f"{row['max |diff|']:.2e}",
             f"{row['SNR dB']:.1f}", f"{row['spectrum r']:.5f}"]
    if "f ours Hz" in row:
        cells.append(f"{row['f ours Hz']:.2f} / {row['f sox Hz']:.2f}")
    return " | ".join(cells)


def gain_precision(signals: dict[str, np.ndarray], folder: Path) -> None:
    """Gain alone in float64: what is left of the difference is sox's 32-bit integer samples."""
    worst = 0.0
    for samples in signals.values():
        for decibels in (-4.0, 0.0, 3.0):
            chain = [("gain", decibels)]
            ours = run_ours(samples, chain, torch.float64)
            worst = max(worst, float(np.abs(ours - run_sox(samples, chain, folder)).max()))
    print(f"\ngain in float64: max |diff| {worst:.2e} over all signals and gains "
          f"(one 32-bit PCM step: {2.0 ** -31:.2e}; float32 epsilon: "
          f"{np.finfo(np.float32).eps:.2e})")


def main() -> int:
    if shutil.which("sox") is None:
        print("reference_sox.py: the `sox` command is not on PATH; install it (Debian/Ubuntu: "
              "apt-get install -y sox) and run again", file=sys.stderr)
        return 2
    version = subprocess.run(["sox", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; torch {torch.__version__}; {SAMPLE_RATE} Hz, {SECONDS} s signals\n")
    signals = {name: quantised(samples) for name, samples in test_signals().items()}
    print("| case | signal | length ours | length sox | max abs diff | SNR dB | spectrum r | "
          "f ours / sox |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name, chain in CASES:
            for signal, samples in signals.items():
                reference = run_sox(samples, chain, Path(folder), SOX_ARGUMENTS.get(name))
                row = compared(run_ours(samples, chain), reference, tone=signal.startswith("tone"))
                print(f"| {name} | {signal} | {formatted(row)} |")
        gain_precision(signals, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
