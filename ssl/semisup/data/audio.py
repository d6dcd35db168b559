"""The audio data layer: mono waveforms at the dataset's sample rate (USB: 16 kHz), each pool
held on the training device as one zero-padded float tensor (N, T) and the clips' lengths,
augmented a whole batch at a time there (semisup.data.wave_augment) and made into WaveBatch
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
from .wave_augment import StrongAudio, random_crop, real_mask, strong_effects

PAD_TO = ("max_length", "longest")
NORMALIZE_OVER = ("padded", "real")
VARIANCE_EPSILON = 1e-7                 # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


@dataclass
class AudioData:
    """A loaded audio dataset: clips zero-padded to the longest of their set, and lengths."""

    train_waves: Tensor            # float32 (N, T)
    train_lengths: Tensor          # int64 (N,)
    train_labels: Tensor           # int64 (N,)
    test_waves: Tensor
    test_lengths: Tensor
    test_labels: Tensor
    class_names: list[str]
    sample_rate: int
    extra_unlabeled_waves: Tensor | None = None
    extra_unlabeled_lengths: Tensor | None = None
    extra_unlabeled_labels: Tensor | None = None
    unlabeled_includes_train: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shapes(self) -> dict[str, list[int]]:
        """What the manifest records of the data."""
        shapes = {"train_waveforms": list(self.train_waves.shape),
                  "test_waveforms": list(self.test_waves.shape)}
        if self.extra_unlabeled_waves is not None:
            shapes["extra_unlabeled_waveforms"] = list(self.extra_unlabeled_waves.shape)
        return shapes


def padded(clips: Sequence, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """1-d clips (arrays or tensors) as one zero-padded (N, T) tensor and their lengths."""
    lengths = torch.tensor([len(clip) for clip in clips], dtype=torch.int64)
    waves = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0, dtype=dtype)
    for row, clip in enumerate(clips):
        waves[row, :len(clip)] = torch.as_tensor(clip, dtype=dtype)
    return waves, lengths


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

    def __init__(self, pools: dict[str, tuple[Tensor, Tensor]], sample_rate: int,
                 augment: AudioAugment):
        missing = [pool for pool in POOLS if pool not in pools]
        if missing:
            raise ValueError(f"the audio data layer needs the pools {', '.join(missing)}")
        augment.check()
        self.pools, self.sample_rate, self.augment = pools, sample_rate, augment
        self.max_length = int(round(sample_rate * augment.max_length_seconds))

    def size(self, pool: str) -> int:
        return len(self.pools[pool][0])

    def width(self, lengths: Tensor, kind: str) -> int:
        if kind == "strong" or self.augment.pad_to == "max_length":
            return self.max_length
        return max(1, int(lengths.clamp(max=self.max_length).max()))

    def views(self, pool: str, indices: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> list[WaveBatch]:
        self.check_kinds(kinds)
        waves, lengths = (tensor[indices] for tensor in self.pools[pool])
        return [self.view(waves, lengths, kind, generator) for kind in kinds]

    def view(self, waves: Tensor, lengths: Tensor, kind: str,
             generator: torch.Generator) -> WaveBatch:
        if kind == "strong":
            waves, lengths = strong_effects(waves, lengths, self.augment.strong, self.sample_rate,
                                            generator)
        waves, lengths = random_crop(waves, lengths, self.max_length, generator)
        return wave_batch(waves, lengths, self.width(lengths, kind), self.augment.normalize_over)

    def batches(self, pool: str, batch_size: int) -> Iterator[WaveBatch]:
        waves, lengths = self.pools[pool]
        for start in range(0, len(waves), batch_size):
            part = lengths[start:start + batch_size]
            yield wave_batch(waves[start:start + batch_size], part, self.width(part, "weak"),
                             self.augment.normalize_over)


def unlabeled_pool(data: AudioData) -> tuple[Tensor, Tensor, Tensor]:
    """The unlabeled set's waves, lengths and labels: the training set then the extras, or the
    extras alone where the release keeps them apart."""
    extra = (data.extra_unlabeled_waves, data.extra_unlabeled_lengths, data.extra_unlabeled_labels)
    if not data.unlabeled_includes_train:
        return extra
    train = (data.train_waves, data.train_lengths, data.train_labels)
    if extra[0] is None:
        return train
    width = max(train[0].shape[1], extra[0].shape[1])
    pad = lambda waves: torch.nn.functional.pad(waves, (0, width - waves.shape[1]))
    return (torch.cat([pad(train[0]), pad(extra[0])]), torch.cat([train[1], extra[1]]),
            torch.cat([train[2], extra[2]]))


def audio_train_data(data: AudioData, labeled_indices: Tensor, augment: AudioAugment,
                     device) -> TrainData:
    """A loaded audio dataset and its labeled split on the training device."""
    unlabeled = [tensor.to(device) for tensor in unlabeled_pool(data)]
    pools = {"train": (data.train_waves.to(device), data.train_lengths.to(device)),
             "unlabeled": (unlabeled[0], unlabeled[1]),
             "test": (data.test_waves.to(device), data.test_lengths.to(device))}
    return TrainData(modality=AudioModality(pools, data.sample_rate, augment),
                     train_labels=data.train_labels.to(device),
                     labeled_indices=labeled_indices.to(device),
                     test_labels=data.test_labels.to(device), unlabeled_labels=unlabeled[2])
