"""USB's audio augmentation on whole batches of padded waveforms (N, T) with their real lengths,
on the training device. Every random choice is made per sample and drawn from the caller's seeded
torch.Generator (on the waveforms' device), in a fixed order, so a run resumes bit for bit.

semilearn 0.3.2 (datasets/audio_datasets/datasetbase.py, datasets/utils.py) per clip:
  weak    random_subsample: a clip longer than L = round(sample_rate * max_length_seconds)
          samples is cut to L at an offset uniform in 0 .. len - L - 1 (random.randint's
          inclusive end; the last offset is never drawn); a shorter clip is kept whole.
  strong  WaveformTransforms (n = 2): two effects drawn with replacement from
          [gain -n A, pitch P, speed S, reverb -w] (A = int(U(-5, 5)) dB, P = U(-2, 2) cents,
          S = U(0.5, 2.0)), applied in the drawn order by sox (torchaudio.sox_effects, then
          `rate 16000`) to the whole clip, then random_subsample as weak.

Here without sox (torchaudio.sox_effects is deprecated), each effect a few tensor operations:
  gain    the clip scaled to a peak of 10^(A/20) (sox `gain -n A`), then clipped to [-1, 1] as
          sox's integer samples clip.
  speed   resampling by S (the clip lasts len / S), by linear interpolation between samples
          (StrongAudio.resampling = "linear"; sox's `rate` uses a band-limited filter).
  pitch   resampling by 2^(P / 1200) at the same length (StrongAudio.pitch = "resample": the
          clip's end moves by at most 0.12 %; sox's `pitch` keeps the tempo with WSOLA).
  reverb  the wet output of a fixed Freeverb network (sox reverb.c's 8 damped combs and 4
          all-passes, its constants for reverberance 50 %, HF damping 50 %, room scale 100 %,
          wet gain 0 dB) as one convolution with its impulse response (StrongAudio.reverb =
          "freeverb_ir"): the network is linear and time-invariant, so one convolution is the
          whole network; its length is cut at reverb_seconds. With stereo depth 100 % sox
          makes a mono clip stereo (its second network's delays 12 samples at 44.1 kHz longer
          or shorter); semilearn keeps the first channel at the end, but an effect after the
          reverb acts on both: `gain -n` scales to the peak of both channels, a second reverb
          reverberates their mean. So do the effects here, a row carrying the second channel
          after a reverb. benchmarks/reference_sox.py: within 1e-7 of sox 14.4.2.
  Effects after `speed` act on the resampled clip at the sample rate (sox runs them at the sped-up
  rate and resamples at the end: the same delays in seconds, rounded otherwise; for a reverb
  after speed 1.37 that alone leaves -1 to 3 dB of SNR against sox's, benchmarks/README.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

EFFECTS = ("gain", "pitch", "speed", "reverb")
COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)   # sox reverb.c, at 44.1 kHz
ALLPASS_LENGTHS = (225, 341, 441, 556)
STEREO_ADJUST = 12                                                 # the second channel's offset


@dataclass(frozen=True)
class StrongAudio:
    """The strong augmentation's settings (params.yaml: audio.strong); semilearn's values first."""

    effects_per_sample: int = 2
    gain_db: tuple[float, float] = (-5.0, 5.0)       # A = int(U(low, high)), truncated toward 0
    pitch_cents: tuple[float, float] = (-2.0, 2.0)
    speed: tuple[float, float] = (0.5, 2.0)
    resampling: str = "linear"                       # semilearn: sox's band-limited `rate`
    pitch: str = "resample"                          # semilearn: sox `pitch` (WSOLA)
    reverb: str = "freeverb_ir"                      # semilearn: sox `reverb -w`
    reverb_seconds: float = 2.0


def uniform(generator: Tensor | torch.Generator, count: int, low: float, high: float,
            device) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device,
                                           dtype=torch.float64)


def real_mask(lengths: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def crop_offsets(lengths: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """Where semilearn's random_subsample starts each clip's window: uniform over
    0 .. len - crop - 1 for a clip longer than crop, else 0."""
    draws = torch.rand(len(lengths), generator=generator, device=lengths.device,
                       dtype=torch.float64)
    return torch.floor(draws * (lengths - crop).clamp(min=0)).long()


def random_crop(waves: Tensor, lengths: Tensor, crop: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """semilearn's random_subsample on each row: (N, min(T, crop)) and the new lengths."""
    offsets = crop_offsets(lengths, crop, generator)
    width = min(waves.shape[1], crop)
    positions = (offsets[:, None] + torch.arange(width, device=waves.device)).clamp(
        max=waves.shape[1] - 1)
    new_lengths = lengths.clamp(max=crop)
    return waves.gather(1, positions) * real_mask(new_lengths, width), new_lengths


def resample_rows(waves: Tensor, lengths: Tensor, steps: Tensor,
                  new_lengths: Tensor) -> Tensor:
    """Row i read at positions j * steps[i] (j < new_lengths[i]) by linear interpolation."""
    width = int(new_lengths.max())
    positions = torch.arange(width, device=waves.device, dtype=torch.float64)[None] * steps[:, None]
    last = (lengths - 1).clamp(min=0)[:, None]
    positions = torch.minimum(positions, last.double())
    left = positions.floor().long()
    right = torch.minimum(left + 1, last)
    weight = (positions - left).to(waves.dtype)
    padded = torch.nn.functional.pad(waves, (0, max(0, width - waves.shape[1])))
    values = padded.gather(1, left.clamp(max=padded.shape[1] - 1)) * (1 - weight) + \
        padded.gather(1, right.clamp(max=padded.shape[1] - 1)) * weight
    return values * real_mask(new_lengths, width)


def speed_change(waves: Tensor, lengths: Tensor, factors: Tensor) -> tuple[Tensor, Tensor]:
    new_lengths = torch.clamp(torch.round(lengths / factors).long(), min=1)
    return resample_rows(waves, lengths, factors, new_lengths), new_lengths


def pitch_shift(waves: Tensor, lengths: Tensor, cents: Tensor) -> tuple[Tensor, Tensor]:
    return resample_rows(waves, lengths, torch.pow(2.0, cents / 1200), lengths), lengths


def gain_to_peak(waves: Tensor, lengths: Tensor, decibels: Tensor) -> tuple[Tensor, Tensor]:
    peak = waves.abs().amax(dim=1, keepdim=True)
    target = torch.pow(10.0, decibels / 20).to(waves.dtype)[:, None]
    scaled = torch.where(peak > 0, waves * target / peak.clamp(min=1e-30), waves)
    return scaled.clamp(-1.0, 1.0), lengths


@cache
def freeverb_impulse(sample_rate: int, seconds: float, channel: int = 0) -> tuple[float, ...]:
    """The impulse response of sox reverb.c's filter network (reverberance 50, HF damping 50,
    room scale 100, wet gain 0 dB) for output channel 0 or 1 (stereo depth 100: each delay
    length STEREO_ADJUST longer and shorter in turn), in float64."""
    import numpy as np
    from scipy.signal import lfilter

    a = -1 / math.log(1 - 0.3)
    b = 100 / (math.log(1 - 0.98) * a + 1)
    feedback, damping, gain = 1 - math.exp((50 - b) / (a * b)), 0.5 * 0.3 + 0.2, 0.015
    ratio, scale = sample_rate / 44100, 1.0 * 0.9 + 0.1
    offset = STEREO_ADJUST * channel
    impulse = np.zeros(int(round(seconds * sample_rate)))
    impulse[0] = 1.0
    out = np.zeros_like(impulse)
    # each comb: y = z^-d (1 - h z^-1) / (1 - h z^-1 - f (1 - h) z^-d) x
    for number, length in enumerate(COMB_LENGTHS):
        delay = int(scale * ratio * (length + offset * (-1) ** number) + 0.5)
        denominator = np.zeros(delay + 1)
        denominator[0], denominator[1] = 1.0, -damping
        denominator[delay] += -feedback * (1 - damping)
        numerator = np.zeros(delay + 2)
        numerator[delay], numerator[delay + 1] = 1.0, -damping
        out += lfilter(numerator, denominator, impulse)
    for number, length in enumerate(ALLPASS_LENGTHS):   # y = (-1 + 1.5 z^-d) / (1 - 0.5 z^-d) x
        delay = int(ratio * (length + offset * (-1) ** number) + 0.5)
        numerator, denominator = np.zeros(delay + 1), np.zeros(delay + 1)
        numerator[0], numerator[delay] = -1.0, 1.5
        denominator[0], denominator[delay] = 1.0, -0.5
        out = lfilter(numerator, denominator, out)
    return tuple((gain * out).tolist())


def reverb_channels(waves: Tensor, lengths: Tensor, sample_rate: int, seconds: float,
                    outputs: int = 2) -> tuple[Tensor, Tensor]:
    """sox `reverb -w` on rows of one or two channels (N, C, T): the mean of the channels (sox
    reverberates each and averages, the same by linearity) convolved with the first `outputs`
    channels' impulse responses (FFT): (N, outputs, T), clipped."""
    responses = torch.tensor([freeverb_impulse(sample_rate, seconds, channel)
                              for channel in range(outputs)],
                             device=waves.device, dtype=torch.float64)
    width = waves.shape[-1]
    size = width + responses.shape[1] - 1
    mean = waves.double().mean(dim=1, keepdim=True)
    spectrum = torch.fft.rfft(mean, n=size) * torch.fft.rfft(responses, n=size)
    wet = torch.fft.irfft(spectrum, n=size)[..., :width].to(waves.dtype)
    return (wet * real_mask(lengths, width)[:, None]).clamp(-1.0, 1.0), lengths


def reverb(waves: Tensor, lengths: Tensor, sample_rate: int, seconds: float) -> tuple[Tensor, Tensor]:
    """Each row (N, T) convolved with the first channel's impulse response, same length, clipped."""
    return reverb_channels(waves[:, None], lengths, sample_rate, seconds, outputs=1)[0][:, 0], lengths


def apply_effect(effect: str, waves: Tensor, lengths: Tensor, draws: dict[str, Tensor],
                 settings: StrongAudio, sample_rate: int,
                 reverb_outputs: int = 2) -> tuple[Tensor, Tensor]:
    """One effect on rows of one or two channels (N, C, T), as sox runs it on each clip; a
    reverb gives `reverb_outputs` channels (2 where an effect follows it)."""
    if effect == "reverb":
        return reverb_channels(waves, lengths, sample_rate, settings.reverb_seconds,
                               reverb_outputs)
    rows, channels, width = waves.shape
    if effect == "gain":   # one peak over all channels
        scaled, _ = gain_to_peak(waves.reshape(rows, channels * width), lengths, draws["gain"])
        return scaled.reshape(rows, channels, width), lengths
    change = pitch_shift if effect == "pitch" else speed_change
    flat, flat_lengths = change(waves.reshape(rows * channels, width),
                                lengths.repeat_interleave(channels),
                                draws[effect].repeat_interleave(channels))
    return flat.reshape(rows, channels, -1), flat_lengths[::channels]


def check_settings(settings: StrongAudio) -> None:
    for field, value, allowed in (("resampling", settings.resampling, "linear"),
                                  ("pitch", settings.pitch, "resample"),
                                  ("reverb", settings.reverb, "freeverb_ir")):
        if value != allowed:
            raise ValueError(f"audio.strong.{field} is {value!r}; implemented: {allowed!r}")


def strong_effects(waves: Tensor, lengths: Tensor, settings: StrongAudio, sample_rate: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """semilearn's WaveformTransforms on each row (before its random crop): the values drawn
    for every sample, then the chosen effects, each run once on the rows that chose it."""
    check_settings(settings)
    count, device = len(waves), waves.device
    draws = {"speed": uniform(generator, count, *settings.speed, device),
             "pitch": uniform(generator, count, *settings.pitch_cents, device),
             "gain": torch.trunc(uniform(generator, count, *settings.gain_db, device))}
    choices = torch.randint(len(EFFECTS), (settings.effects_per_sample, count),
                            generator=generator, device=device)
    waves = waves[:, None]   # channels: one, two after a reverb (a mono row is its own pair)
    for step, chosen in enumerate(choices):
        results = []
        for number, effect in enumerate(EFFECTS):
            rows = (chosen == number).nonzero().flatten()
            if len(rows):
                part = _effect_on_rows(effect, waves[rows], lengths[rows],
                                       {key: value[rows] for key, value in draws.items()},
                                       settings, sample_rate, last=step + 1 == len(choices))
                results.append((rows, *part))
        waves = _gathered(results, count, waves.dtype, device)
        lengths = torch.zeros(count, dtype=torch.long, device=device)
        for rows, _, part_lengths in results:
            lengths[rows] = part_lengths
    return waves[:, 0], lengths


def _effect_on_rows(effect: str, waves: Tensor, lengths: Tensor, draws: dict[str, Tensor],
                    settings: StrongAudio, sample_rate: int, last: bool) -> tuple[Tensor, Tensor]:
    """apply_effect; the last effect gives the first channel alone (semilearn keeps it), and
    pitch and speed, which act on each channel alone, then run on it alone."""
    if not last:
        return apply_effect(effect, waves, lengths, draws, settings, sample_rate)
    if effect in ("pitch", "speed"):
        waves = waves[:, :1]
    out, lengths = apply_effect(effect, waves, lengths, draws, settings, sample_rate,
                                reverb_outputs=1)
    return out[:, :1], lengths


def _gathered(results, count: int, dtype, device) -> Tensor:
    channels = max(part.shape[1] for _, part, _ in results)
    width = max(part.shape[2] for _, part, _ in results)
    waves = torch.zeros(count, channels, width, dtype=dtype, device=device)
    for rows, part, _ in results:
        waves[rows, :, :part.shape[2]] = part   # one channel fills both
    return waves
