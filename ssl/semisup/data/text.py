"""The text data layer: token ids resident on the training device, tokenised once when the data
is loaded (not per step), served as TokenBatch (ids + attention mask, semisup.data.inputs).

As semilearn 0.3.2 (datasets/nlp_datasets/datasetbase.py and datasets/collactors/
nlp_collactor.py) makes its batches:
- each text is tokenised with the network's tokenizer, `tokenizer(text, max_length=max_length,
  truncation=True)`: [CLS] ... [SEP], at most max_length tokens (USB: 512);
- a view is padded to its longest text (the collator's `tokenizer.pad(padding=True)`), with the
  id 0 ([PAD] in BERT's vocabularies; semisup.data.inputs joins views padding with 0 too). The
  mask says 1 on real tokens, 2 on that padding of the view's own batch and (once views are
  joined) 0 on the padding the join adds: the network attends to the 1s only, and semilearn's
  pooling, which averages its view's padding too, can average the 1s and 2s of a joined batch
  exactly as semilearn does forwarding each view alone (semisup.models.bert, view_positions);
- "weak" is the original text (USB's text has no weak augmentation);
- "strong" is one of the sample's two back-translations (aug_0: via German, aug_1: via Russian),
  drawn uniformly per sample (semilearn: `random.randint(1, 2)`, from Python's own generator;
  here from the step's augment generator). Where an algorithm asks for two strong views (CoMatch,
  ReMixMatch), the second is the other back-translation (semilearn shuffles [aug_0, aug_1]).

Pools: "train" and "unlabeled" are the training texts (the unlabeled set includes the labeled
texts, as semilearn's include_lb_to_ulb); "validation" (the release's dev.json) and "test" hold
original texts only.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .inputs import TokenBatch
from .modality import Modality, TrainData

PAD_ID = 0
VIEW_PADDING = 2   # the mask's value on the padding of a view's own batch


@dataclass
class TextData:
    """A text dataset as its release gives it."""

    train_texts: list[tuple[str, str, str]]   # (original, back-translation 0, back-translation 1)
    train_labels: Tensor                      # int64 (N,)
    validation_texts: list[str]
    validation_labels: Tensor
    test_texts: list[str]
    test_labels: Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shapes(self) -> dict[str, list[int]]:
        return {"train_texts": [len(self.train_texts), 3],
                "validation_texts": [len(self.validation_texts)],
                "test_texts": [len(self.test_texts)]}


class RaggedTokens:
    """Token id sequences of different lengths, stored end to end (int32) with their starts."""

    def __init__(self, flat: Tensor, lengths: Tensor):
        self.flat, self.lengths = flat, lengths
        self.starts = torch.cumsum(lengths, 0) - lengths

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> RaggedTokens:
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        if (lengths == 0).any():
            raise ValueError("a text tokenised to no tokens: the tokenizer adds none of its "
                             "special tokens ([CLS], [SEP]); use the network's own tokenizer")
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int32,
                           count=int(lengths.sum()))
        return cls(torch.from_numpy(flat), torch.from_numpy(lengths))

    @classmethod
    def join(cls, parts: Sequence[RaggedTokens]) -> RaggedTokens:
        return cls(torch.cat([part.flat for part in parts]),
                   torch.cat([part.lengths for part in parts]))

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device) -> RaggedTokens:
        return RaggedTokens(self.flat.to(device), self.lengths.to(device))

    def batch(self, rows: Tensor) -> TokenBatch:
        """The sequences at `rows`, padded with PAD_ID to the longest of them; the mask is 1 on
        their tokens, VIEW_PADDING on the padding."""
        lengths = self.lengths[rows]
        positions = torch.arange(int(lengths.max()), device=lengths.device)
        real = positions[None, :] < lengths[:, None]
        index = (self.starts[rows][:, None] + positions[None, :]).clamp(max=len(self.flat) - 1)
        ids = torch.where(real, self.flat[index].long(), PAD_ID)
        return TokenBatch(ids=ids, mask=torch.where(real, 1, VIEW_PADDING))


def tokenize(texts: Sequence[str], tokenizer, max_length: int,
             chunk_size: int = 10_000) -> RaggedTokens:
    """semilearn's collator call, once per text: [CLS] text [SEP], truncated to max_length; in
    chunks, so that the tokenizer's Python lists of a 500,000-text release never exist at once."""
    parts = []
    for start in range(0, len(texts), chunk_size):
        chunk = list(texts[start:start + chunk_size])
        encoded = tokenizer(chunk, max_length=max_length, truncation=True, padding=False)
        parts.append(RaggedTokens.from_lists(encoded["input_ids"]))
    return RaggedTokens.join(parts)


@dataclass
class TokenizedText:
    """A text dataset's pools tokenised: originals of every pool, back-translations of the
    training texts (aug_0 rows 0 .. N-1, then aug_1 rows N .. 2N-1)."""

    train: RaggedTokens
    back_translations: RaggedTokens
    validation: RaggedTokens
    test: RaggedTokens

    @classmethod
    def of(cls, data: TextData, tokenizer, max_length: int) -> TokenizedText:
        originals = [texts[0] for texts in data.train_texts]
        back = [texts[1] for texts in data.train_texts] + [texts[2] for texts in data.train_texts]
        return cls(tokenize(originals, tokenizer, max_length), tokenize(back, tokenizer, max_length),
                   tokenize(data.validation_texts, tokenizer, max_length),
                   tokenize(data.test_texts, tokenizer, max_length))

    def to(self, device) -> TokenizedText:
        return TokenizedText(self.train.to(device), self.back_translations.to(device),
                             self.validation.to(device), self.test.to(device))

    POOL_NAMES = ("train", "back_translations", "validation", "test")

    def state_dict(self) -> dict[str, Tensor]:
        return {f"{pool}.{part}": getattr(getattr(self, pool), part)
                for pool in self.POOL_NAMES for part in ("flat", "lengths")}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> TokenizedText:
        return cls(*(RaggedTokens(state[f"{pool}.flat"], state[f"{pool}.lengths"])
                     for pool in cls.POOL_NAMES))

    @classmethod
    def cached(cls, data: TextData, tokenizer, max_length: int, path: Path | None) -> TokenizedText:
        """`of`, kept in `path` (a name that says what made it: tokenizer_fingerprint, the data's
        digest, max_length) so that the runs of a study tokenise their data once; a cache that
        cannot be read is made again."""
        if path is not None and path.exists():
            try:
                return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
                pass   # a cache only: made again below
        tokens = cls.of(data, tokenizer, max_length)
        if path is not None:
            from ..checkpoint import save_atomically
            save_atomically(tokens.state_dict(), path)
        return tokens


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's whole definition (vocabulary, normalisation, special tokens),
    without the truncation and padding settings its last call left on it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        definition = sorted(tokenizer.get_vocab().items())
    else:
        definition = {key: value for key, value in json.loads(backend.to_str()).items()
                      if key not in ("truncation", "padding")}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


class TextModality(Modality):
    name = "text"
    view_kinds = ("weak", "strong")

    def __init__(self, tokens: TokenizedText):
        self.tokens = tokens
        self.pools = {"train": tokens.train, "unlabeled": tokens.train,
                      "validation": tokens.validation, "test": tokens.test}

    def size(self, pool: str) -> int:
        return len(self.pools[pool])

    def views(self, pool: str, indices: Tensor, kinds: Sequence[str],
              generator: torch.Generator) -> list[TokenBatch]:
        self.check_kinds(kinds)
        if "strong" in kinds and pool not in ("train", "unlabeled"):
            raise ValueError(f"the text pool {pool!r} has no back-translations for strong views")
        views, choice, strong_made = [], None, 0
        for kind in kinds:
            if kind == "weak":
                views.append(self.pools[pool].batch(indices))
                continue
            if choice is None:   # which back-translation each sample's first strong view shows
                choice = torch.randint(2, (len(indices),), generator=generator,
                                       device=generator.device)
            which = (choice + strong_made) % 2
            strong_made += 1
            views.append(self.tokens.back_translations.batch(which * len(self.tokens.train) + indices))
        return views

    def batches(self, pool: str, batch_size: int) -> Iterator[TokenBatch]:
        tokens = self.pools[pool]
        every = torch.arange(len(tokens), device=tokens.lengths.device)
        for start in range(0, len(tokens), batch_size):
            yield tokens.batch(every[start:start + batch_size])


def text_train_data(data: TextData, labeled_indices: Tensor, tokenizer, max_length: int,
                    device, cache: Path | None = None) -> TrainData:
    """A loaded text dataset, tokenised once (or read from `cache`), and its labeled split on
    the training device."""
    tokens = TokenizedText.cached(data, tokenizer, max_length, cache)
    modality = TextModality(tokens.to(device))
    return TrainData(modality=modality, train_labels=data.train_labels.to(device),
                     labeled_indices=labeled_indices.to(device),
                     test_labels=data.test_labels.to(device),
                     unlabeled_labels=data.train_labels.to(device),
                     validation_labels=data.validation_labels.to(device))
