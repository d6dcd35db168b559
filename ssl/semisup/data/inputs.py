"""What a network takes, per modality, and how batches of it are joined and split.

A training step runs several views (labeled, weak, strong, ...) through the network as one
concatenated batch, so that BatchNorm sees them together as the references do, and splits the
outputs again. Each modality's input type supports that:

  image   a float tensor (N, C, H, W), normalised
  text    TokenBatch: token ids (N, L) and an attention mask (N, L), 1 on real tokens
  audio   WaveBatch: waveforms (N, T) and a mask (N, T), 1 on real samples

Batches of text or audio padded to different lengths are joined by padding the shorter ones
(ids and waveforms with 0, masks with 0): the mask says what is real.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor


def _pad_to(values: Tensor, length: int) -> Tensor:
    missing = length - values.shape[1]
    return values if missing == 0 else torch.nn.functional.pad(values, (0, missing))


@dataclass
class _Masked:
    """A batch of padded sequences and their mask; a subclass names its values' field."""

    values_field: ClassVar[str]

    def _values(self) -> Tensor:
        return getattr(self, self.values_field)

    def _make(self, values: Tensor, mask: Tensor) -> _Masked:
        return replace(self, **{self.values_field: values, "mask": mask})

    def __len__(self) -> int:
        return self._values().shape[0]

    def to(self, device) -> _Masked:
        return self._make(self._values().to(device), self.mask.to(device))

    @classmethod
    def cat(cls, batches: Sequence[_Masked]) -> _Masked:
        length = max(batch._values().shape[1] for batch in batches)
        return batches[0]._make(torch.cat([_pad_to(b._values(), length) for b in batches]),
                                torch.cat([_pad_to(b.mask, length) for b in batches]))

    def split(self, sizes: Sequence[int]) -> list[_Masked]:
        return [self._make(values, mask) for values, mask in
                zip(self._values().split(list(sizes)), self.mask.split(list(sizes)), strict=True)]


@dataclass
class TokenBatch(_Masked):
    """Token ids (int64, N x L) and the attention mask (N x L, 1 on real tokens)."""

    ids: Tensor
    mask: Tensor
    values_field: ClassVar[str] = "ids"


@dataclass
class WaveBatch(_Masked):
    """Waveforms (float, N x T, one channel) and their mask (N x T, 1 on real samples)."""

    waveform: Tensor
    mask: Tensor
    values_field: ClassVar[str] = "waveform"


@dataclass
class EmbeddedTokens:
    """A TokenBatch as the vectors a text network feeds its encoder (N x L x H) and the
    TokenBatch's mask: what VAT perturbs on text (semilearn's vat_embed), never a data layer's
    output, so it is not joined with other batches."""

    embeddings: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def to(self, device) -> EmbeddedTokens:
        return EmbeddedTokens(self.embeddings.to(device), self.mask.to(device))


Inputs = Tensor | TokenBatch | WaveBatch


def cat_inputs(batches: Sequence[Inputs]) -> Inputs:
    """One batch of the given batches, in order (all of one input type)."""
    kinds = {type(batch) for batch in batches}
    if len(kinds) != 1:
        raise TypeError(f"cannot join inputs of different types: {sorted(k.__name__ for k in kinds)}")
    if isinstance(batches[0], Tensor):
        return torch.cat(list(batches))
    return type(batches[0]).cat(batches)


def split_inputs(inputs: Inputs, sizes: Sequence[int]) -> list[Inputs]:
    """The inverse of cat_inputs: consecutive batches of the given sizes."""
    if isinstance(inputs, Tensor):
        return list(inputs.split(list(sizes)))
    return inputs.split(sizes)


def batch_size(inputs: Inputs) -> int:
    return inputs.shape[0] if isinstance(inputs, Tensor) else len(inputs)
