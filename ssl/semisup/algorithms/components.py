"""State that checkpoints carry, and the shared parts algorithms are built from.

`Stateful` saves the attributes a class lists in `state_names` (tensors or Python values) and,
without more code, the state of every `Stateful` attribute it holds (its components). An
algorithm is Stateful; so are the shared components below, so an algorithm that holds one gets
its state saved, loaded and moved to the training device with its own.

  DistributionAlignment   the running mean of unlabeled predictions and the alignment of
                          predictions to a target distribution (SoftMatch; ReMixMatch, AdaMatch)
  FeatureQueue            the most recent rows pushed (CoMatch's features and probabilities,
                          Dash's warm-up losses): a ring buffer
  MemoryBank              one row per sample, updated by index (SimMatch's labeled bank)
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .masking import distribution_alignment, ema_update


class Stateful:
    """Saves `state_names` and the state of every Stateful attribute (by attribute name)."""

    state_names: ClassVar[tuple[str, ...]] = ()
    device: torch.device = torch.device("cpu")   # where tensor state lives; set by `to`

    def components(self) -> dict[str, Stateful]:
        return {key: value for key, value in vars(self).items() if isinstance(value, Stateful)}

    def to(self, device) -> Stateful:
        """Move every tensor attribute and every component to `device`."""
        self.device = torch.device(device)
        for key, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device))
        for component in self.components().values():
            component.to(device)
        return self

    def state_dict(self) -> dict:
        """What checkpoints carry: tensors cloned, Python values as they are."""
        state = {}
        for key in self.state_names:
            value = getattr(self, key)
            state[key] = value.detach().clone() if isinstance(value, Tensor) else value
        state.update({key: part.state_dict() for key, part in self.components().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        expected = set(self.state_names) | set(self.components())
        missing = expected - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__}: the saved state lacks {sorted(missing)}; was "
                           f"it written by another algorithm or an older version of this one?")
        for key, part in self.components().items():
            part.load_state_dict(state[key])
        for key in self.state_names:
            setattr(self, key, self._restored(getattr(self, key), state[key]))

    def _restored(self, current, value):
        if isinstance(current, Tensor) and isinstance(value, Tensor):
            return value.to(current.device, current.dtype).clone()
        if isinstance(value, Tensor):   # state that starts as None (e.g. Dash's rho_hat)
            return value.to(self.device).clone()
        return value


class DistributionAlignment(Stateful):
    """p_model, the running mean of the unlabeled predictions (an EMA with `momentum`, started at
    the first batch's mean, as semilearn's DistAlignEMAHook), and the alignment
    p * (p_target + 1e-6) / (p_model + 1e-6), renormalised (the 1e-6 guards are USB's).
    `target`: the distribution to align to (None: uniform)."""

    state_names = ("p_model", "started")

    def __init__(self, num_classes: int, momentum: float, target: Tensor | None = None):
        self.momentum = momentum
        self.p_target = (torch.full((num_classes,), 1.0 / num_classes) if target is None
                         else target.float())
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.started = False

    def update(self, probs: Tensor) -> None:
        batch_mean = probs.mean(dim=0)
        self.p_model = (ema_update(self.p_model, batch_mean, self.momentum) if self.started
                        else batch_mean)
        self.started = True

    def align(self, probs: Tensor) -> Tensor:
        return distribution_alignment(probs, self.p_model, self.p_target)

    def __call__(self, probs: Tensor) -> Tensor:
        """Fold the batch into p_model, then align it."""
        self.update(probs)
        return self.align(probs)


class FeatureQueue(Stateful):
    """The `size` most recent rows pushed, oldest overwritten first. `filled()` is the rows
    pushed so far (all `size` once it has wrapped), in buffer order."""

    state_names = ("rows", "count")

    def __init__(self, size: int, *row_shape: int, dtype: torch.dtype = torch.float32):
        if size < 1:
            raise ValueError(f"a queue needs a size of at least 1, got {size}")
        self.rows = torch.zeros((size, *row_shape), dtype=dtype)
        self.count = 0   # rows written so far (a push of more than `size` writes its last `size`)

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def push(self, rows: Tensor) -> None:
        rows = rows.detach()[-self.size:]   # more than fit: the most recent
        positions = (self.count + torch.arange(len(rows), device=rows.device)) % self.size
        self.rows[positions.to(self.rows.device)] = rows.to(self.rows.device, self.rows.dtype)
        self.count += len(rows)

    def filled(self) -> Tensor:
        return self.rows[:min(self.count, self.size)]


class MemoryBank(Stateful):
    """One row per sample (e.g. per labeled image), overwritten by index."""

    state_names = ("rows",)

    def __init__(self, num_rows: int, *row_shape: int, dtype: torch.dtype = torch.float32,
                 fill: float = 0.0):
        self.rows = torch.full((num_rows, *row_shape), fill, dtype=dtype)

    def update(self, indices: Tensor, rows: Tensor) -> None:
        """rows[i] = the new row of index i. An index given twice keeps its later row: every
        occurrence writes that row, so the scatter is deterministic on any device."""
        position = torch.arange(len(indices), device=indices.device)
        same_index = indices[:, None] == indices[None, :]
        last = torch.where(same_index, position[None, :], -1).amax(dim=1)
        rows = rows.detach()[last]
        self.rows[indices.to(self.rows.device)] = rows.to(self.rows.device, self.rows.dtype)

    def __getitem__(self, indices: Tensor) -> Tensor:
        return self.rows[indices]
