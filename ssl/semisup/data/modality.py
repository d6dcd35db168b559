"""The data layer: a modality holds a dataset's inputs on the training device and makes what
the network eats from them: the training views an algorithm asks for (augmented, normalised)
and the evaluation batches (normalised only). The trainer samples indices and asks for views; it
never names an image, a token or a waveform.

Inputs come in three pools: "train" (the training set: the labeled samples are drawn from it by
their indices), "unlabeled" (the unlabeled set: the training set plus extra unlabeled samples,
where a dataset has them) and "test"; a dataset with a validation split has a fourth,
"validation".

An augmentation may learn during training (CTAugment): then the modality makes a probe of the
labeled batch each step (`probe`), the trainer scores it with a network and hands the
predictions back (`learn`), and the modality's `state_dict` (what it has learned) goes into
checkpoints. A modality without one returns no probe and has no state.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from .inputs import Inputs

POOLS = ("train", "unlabeled", "test")


class Modality:
    """Subclasses list the view kinds they make and implement `size`, `views` and `batches`."""

    name: ClassVar[str] = ""
    view_kinds: ClassVar[tuple[str, ...]] = ()

    def size(self, pool: str) -> int:
        raise NotImplementedError

    def views(self, pool: str, indices: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> list[Inputs]:
        """One view of the samples at `indices` of `pool` per kind, in the order of `kinds`,
        drawn from `generator` in that order."""
        raise NotImplementedError

    def batches(self, pool: str, batch_size: int) -> Iterator[Inputs]:
        """The pool's inputs in order, without augmentation, `batch_size` at a time."""
        raise NotImplementedError

    def probe(self, pool: str, indices: Tensor, labels: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> Probe | None:
        """A probe of the samples at `indices` of `pool` when one of the view kinds `kinds` uses
        an augmentation that learns from probes; None otherwise (and nothing is drawn)."""
        return None

    def learn(self, probe: Probe, probabilities: Tensor) -> dict[str, Tensor]:
        """Update the augmentation from the network's class probabilities on `probe`; returns
        per-step statistics (0-dim tensors)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the augmentation has learned (checkpoints carry it); {} when nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def reset_state(self) -> None:
        """Forget what the augmentation has learned (a new run starts)."""

    def check_kinds(self, kinds: Sequence[str]) -> None:
        unknown = [kind for kind in kinds if kind not in self.view_kinds]
        if unknown:
            raise ValueError(f"the {self.name} data layer makes the views "
                             f"{', '.join(self.view_kinds)}, not {', '.join(unknown)}")


@dataclass
class Probe:
    """Labeled samples augmented to score an augmentation that learns (CTAugment's probe):
    `inputs` and their `labels`, the modality's record of what each input went through
    (`policy`), and the network that scores them, in eval mode: "ema" or "raw"."""

    inputs: Inputs
    labels: Tensor
    policy: object
    network: str


@dataclass(frozen=True)
class DataFacts:
    """What an algorithm may know of the data before training (to size its state)."""

    num_classes: int
    num_labeled: int
    num_unlabeled: int
    labeled_class_counts: tuple[int, ...]    # how many labeled samples each class has


@dataclass
class TrainData:
    """A dataset on the training device: its data layer and labels. The labeled samples are
    `labeled_indices` of the data layer's "train" pool; the unlabeled set is its "unlabeled"
    pool, whose true labels (-1 where unknown) serve statistics only."""

    modality: Modality
    train_labels: Tensor
    labeled_indices: Tensor
    test_labels: Tensor
    unlabeled_labels: Tensor
    # The labels of the data layer's "validation" pool, where the dataset has one (USB's text
    # and audio releases: their dev split, evaluated beside the test set).
    validation_labels: Tensor | None = None

    def with_labeled_set(self, labeled_set: str) -> TrainData:
        """The data an algorithm trains on: "split", the split's labeled samples; "all", every
        training sample with its label (the fully supervised upper bound)."""
        if labeled_set == "split":
            return self
        if labeled_set != "all":
            raise ValueError(f"labeled_set must be 'split' or 'all', not {labeled_set!r}")
        every = torch.arange(len(self.train_labels), device=self.labeled_indices.device)
        return replace(self, labeled_indices=every)

    def facts(self, num_classes: int, labeled_set: str = "split") -> DataFacts:
        data = self.with_labeled_set(labeled_set)
        counts = torch.bincount(data.train_labels[data.labeled_indices].cpu(), minlength=num_classes)
        return DataFacts(num_classes=num_classes, num_labeled=len(data.labeled_indices),
                         num_unlabeled=len(data.unlabeled_labels),
                         labeled_class_counts=tuple(int(c) for c in counts))
