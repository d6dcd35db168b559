"""The audio data layer: mono waveforms at the dataset's sample rate (USB: 16 kHz), each pool
held on the training device as its clips end to end in one float tensor and their lengths (clips
of 0.3 to 30 s, as FSDnoisy18k's, are not padded to the longest), augmented a whole batch at a time there (semisup.data.wave_augment) and made into WaveBatch
inputs as semilearn's collator makes them (datasets/collactors/audio_collactor.py, its
Wav2Vec2FeatureExtractor for hubert-base-ls960 and wav2vec2-base-960h):

  1. cut to at most L = round(sample_rate * max_length_seconds) samples: a random window in
     training views (semilearn's random_subsample), the first L samples in evaluation (the
     extractor's truncation);
  2. padded with zeros to a width P: L for strong views (semilearn's padding="max_length"); for
     weak views and evaluation batches semilearn pads to the longest clip of the batch
     (padding=True): pad_to = "longest"; pad_to = "max_length" pads them to L as well, so that
     a view does not depend on the other clips of its batch nor on the views it is joined with
     (the trainer runs all views as one batch; semilearn's audio configs set use_cat False);
  3. normalised to zero mean and unit variance per clip, (x - mean) / sqrt(var + 1e-7): over the
     P padded values (normalize_over = "padded": these extractors return no attention mask, so
     the padding counts) or over the real samples only, the padding left at 0 ("real").

The mask of each WaveBatch is 1 on the real samples. View kinds: "weak" (1-3) and "strong"
(semilearn's WaveformTransforms on the whole clip, then 1-3).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .inputs import WaveBatch
from .modality import POOLS, Modality, TrainData
from .wave_augment import StrongAudio, crop_offsets, random_crop, real_mask, strong_effects

PAD_TO = ("max_length", "longest")
NORMALIZE_OVER = ("padded", "real")
VARIANCE_EPSILON = 1e-7                 # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


@dataclass
class AudioData:
    """A loaded audio dataset: each set's clips end to end (float32, all samples) and their
    lengths (int64, one per clip)."""

    train_samples: Tensor
    train_lengths: Tensor
    train_labels: Tensor           # int64 (N,)
    test_samples: Tensor
    test_lengths: Tensor
    test_labels: Tensor
    class_names: list[str]
    sample_rate: int
    extra_unlabeled_samples: Tensor | None = None
    extra_unlabeled_lengths: Tensor | None = None
    extra_unlabeled_labels: Tensor | None = None
    unlabeled_includes_train: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shapes(self) -> dict[str, list[int]]:
        """What the manifest records of the data: [clips, samples in all] per set."""
        sets = {"train": self.train_lengths, "test": self.test_lengths,
                "extra_unlabeled": self.extra_unlabeled_lengths}
        return {f"{name}_waveforms": [len(lengths), int(lengths.sum())]
                for name, lengths in sets.items() if lengths is not None}


def ragged(clips: Sequence) -> tuple[Tensor, Tensor]:
    """1-d clips (arrays or tensors) end to end in one float32 tensor, and their lengths."""
    lengths = torch.tensor([len(clip) for clip in clips], dtype=torch.int64)
    parts = [torch.as_tensor(clip, dtype=torch.float32).reshape(-1) for clip in clips]
    return (torch.cat(parts) if parts else torch.zeros(0)), lengths


def padded(clips: Sequence, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """1-d clips (arrays or tensors) as one zero-padded (N, T) tensor and their lengths."""
    lengths = torch.tensor([len(clip) for clip in clips], dtype=torch.int64)
    waves = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0, dtype=dtype)
    for row, clip in enumerate(clips):
        waves[row, :len(clip)] = torch.as_tensor(clip, dtype=dtype)
    return waves, lengths


class Clips:
    """A pool on the training device: its clips end to end, their starts and lengths."""

    def __init__(self, samples: Tensor, lengths: Tensor):
        self.samples, self.lengths = samples, lengths
        self.starts = torch.cumsum(lengths, 0) - lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, indices: Tensor, offsets: Tensor, width: int) -> Tensor:
        """(len(indices), width): each clip from its offset, zeros past its end."""
        lengths = self.lengths[indices] - offsets
        positions = self.starts[indices, None] + offsets[:, None] + torch.arange(
            width, device=self.samples.device)
        inside = real_mask(lengths, width)
        values = self.samples[positions.clamp(max=max(len(self.samples) - 1, 0))]
        return values * inside


@dataclass(frozen=True)
class AudioAugment:
    """The audio data layer's settings (params.yaml: audio)."""

    max_length_seconds: float
    pad_to: str = "max_length"
    normalize_over: str = "padded"
    strong: StrongAudio = field(default_factory=StrongAudio)

    def check(self) -> None:
        for name, value, allowed in (("pad_to", self.pad_to, PAD_TO),
                                     ("normalize_over", self.normalize_over, NORMALIZE_OVER)):
            if value not in allowed:
                raise ValueError(f"audio.{name} is {value!r}; allowed: {', '.join(allowed)}")
        if self.max_length_seconds <= 0:
            raise ValueError(f"audio.max_length_seconds must be > 0, not {self.max_length_seconds}")


def normalized(waves: Tensor, lengths: Tensor, over: str) -> Tensor:
    if over == "padded":
        mean = waves.mean(dim=1, keepdim=True)
        variance = waves.var(dim=1, unbiased=False, keepdim=True)
        return (waves - mean) / torch.sqrt(variance + VARIANCE_EPSILON)
    mask = real_mask(lengths, waves.shape[1])
    count = lengths.clamp(min=1)[:, None].to(waves.dtype)
    mean = waves.sum(dim=1, keepdim=True) / count
    variance = ((waves - mean) * mask).square().sum(dim=1, keepdim=True) / count
    return (waves - mean) / torch.sqrt(variance + VARIANCE_EPSILON) * mask


def wave_batch(waves: Tensor, lengths: Tensor, width: int, over: str) -> WaveBatch:
    """Cut or zero-pad to `width`, normalise, with the mask of the real samples."""
    lengths = lengths.clamp(max=width)
    waves = waves[:, :width]
    if waves.shape[1] < width:
        waves = torch.nn.functional.pad(waves, (0, width - waves.shape[1]))
    waves = waves * real_mask(lengths, width)
    return WaveBatch(normalized(waves, lengths, over), real_mask(lengths, width).to(waves.dtype))


class AudioModality(Modality):
    name = "audio"
    view_kinds = ("weak", "strong")

    def __init__(self, pools: dict[str, Clips], sample_rate: int, augment: AudioAugment):
        missing = [pool for pool in POOLS if pool not in pools]
        if missing:
            raise ValueError(f"the audio data layer needs the pools {', '.join(missing)}")
        augment.check()
        self.pools, self.sample_rate, self.augment = pools, sample_rate, augment
        self.max_length = int(round(sample_rate * augment.max_length_seconds))

    def size(self, pool: str) -> int:
        return len(self.pools[pool])

    def width(self, lengths: Tensor, kind: str) -> int:
        if kind == "strong" or self.augment.pad_to == "max_length":
            return self.max_length
        return max(1, int(lengths.clamp(max=self.max_length).max()))

    def views(self, pool: str, indices: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> list[WaveBatch]:
        self.check_kinds(kinds)
        return [self.view(self.pools[pool], indices, kind, generator) for kind in kinds]

    def view(self, clips: Clips, indices: Tensor, kind: str,
             generator: torch.Generator) -> WaveBatch:
        lengths = clips.lengths[indices]
        if kind == "strong":   # the effects act on whole clips, then the window is cut
            whole = clips.rows(indices, torch.zeros_like(lengths), int(lengths.max()))
            waves, lengths = strong_effects(whole, lengths, self.augment.strong, self.sample_rate,
                                            generator)
            waves, lengths = random_crop(waves, lengths, self.max_length, generator)
        else:                  # the window straight from the pool
            offsets = crop_offsets(lengths, self.max_length, generator)
            lengths = lengths.clamp(max=self.max_length)
            waves = clips.rows(indices, offsets, int(lengths.max()))
        return wave_batch(waves, lengths, self.width(lengths, kind), self.augment.normalize_over)

    def batches(self, pool: str, batch_size: int) -> Iterator[WaveBatch]:
        clips = self.pools[pool]
        for start in range(0, len(clips), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(clips)),
                                   device=clips.lengths.device)
            lengths = clips.lengths[indices].clamp(max=self.max_length)
            waves = clips.rows(indices, torch.zeros_like(lengths), int(lengths.max()))
            yield wave_batch(waves, lengths, self.width(lengths, "weak"),
                             self.augment.normalize_over)


def audio_train_data(data: AudioData, labeled_indices: Tensor, augment: AudioAugment,
                     device) -> TrainData:
    """A loaded audio dataset and its labeled split on the training device. The unlabeled set
    is the training set then the extras (the same tensors where there are none), or the extras
    alone where the release keeps them apart."""
    on = lambda tensor: tensor.to(device)
    train = Clips(on(data.train_samples), on(data.train_lengths))
    if data.extra_unlabeled_samples is None:
        unlabeled, unlabeled_labels = train, on(data.train_labels)
    else:
        extra = (data.extra_unlabeled_samples, data.extra_unlabeled_lengths,
                 data.extra_unlabeled_labels)
        if data.unlabeled_includes_train:
            extra = [torch.cat(pair) for pair in zip((data.train_samples, data.train_lengths,
                                                       data.train_labels), extra, strict=True)]
        unlabeled, unlabeled_labels = Clips(on(extra[0]), on(extra[1])), on(extra[2])
    pools = {"train": train, "unlabeled": unlabeled,
             "test": Clips(on(data.test_samples), on(data.test_lengths))}
    return TrainData(modality=AudioModality(pools, data.sample_rate, augment),
                     train_labels=on(data.train_labels), labeled_indices=on(labeled_indices),
                     test_labels=on(data.test_labels), unlabeled_labels=unlabeled_labels)
