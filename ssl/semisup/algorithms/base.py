"""The algorithm interface: one training step's loss and statistics, plus explicit state."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class StepBatch:
    """Everything one training step sees. Images are float, normalised, on the training device.

    `strong_images` is the algorithm's second view of the unlabeled images: strongly augmented
    for the FixMatch family, another weak view for Mean Teacher / Pi-model, None where the
    algorithm declares `second_view = None`. Unlabeled fields are None for purely supervised
    algorithms. `unlabeled_labels` are the true labels, used for statistics only (never for loss).
    """

    labeled_images: Tensor
    labels: Tensor
    weak_images: Tensor | None = None
    strong_images: Tensor | None = None
    unlabeled_indices: Tensor | None = None
    unlabeled_labels: Tensor | None = None


@dataclass
class StepOutput:
    """The loss to minimise and per-step statistics (0-dim tensors: no host synchronisation)."""

    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Algorithm:
    """Base class. Subclasses set `name` and implement `training_step`.

    Class attributes tell the trainer what data to prepare:
      uses_unlabeled: whether unlabeled batches are drawn at all.
      second_view:    "strong" (weak + RandAugment + Cutout), "weak" (a second weak view) or None.
      needs_teacher:  whether `training_step` needs the EMA model (Mean Teacher).
    `state_names` lists the attributes (tensors or Python scalars) that checkpoints must carry.
    """

    name: ClassVar[str] = ""
    uses_unlabeled: ClassVar[bool] = True
    second_view: ClassVar[str | None] = "strong"
    needs_teacher: ClassVar[bool] = False
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, num_classes: int, num_unlabeled: int, num_labeled: int,
                 total_steps: int):
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled
        self.num_labeled = num_labeled
        self.total_steps = total_steps
        self.device = torch.device("cpu")   # where tensor state lives; set by `to`

    def training_step(self, model: nn.Module, batch: StepBatch, step: int,
                      teacher: nn.Module | None = None) -> StepOutput:
        raise NotImplementedError

    def supervised_only(self, step: int) -> bool:
        """True while the algorithm trains on labeled data only (e.g. Dash `usb` warm-up)."""
        return False

    def setup(self, model: nn.Module) -> None:
        """Called once with the freshly initialised model, before any step and before a
        checkpoint is loaded (Dash `usb` keeps the initial weights when it needs them)."""

    def on_evaluation(self, step: int, metrics: dict[str, float], model: nn.Module,
                      evaluate: Callable[[nn.Module], dict[str, float]]) -> None:
        """Called by the trainer after each evaluation with its metrics, the raw model and a
        function that evaluates any model the same way (Dash `usb` reads rho_hat here)."""

    def to(self, device: torch.device) -> Algorithm:
        """Move every tensor attribute (the algorithm's state) to `device`."""
        self.device = torch.device(device)
        for key in self._tensor_state_names():
            setattr(self, key, getattr(self, key).to(device))
        return self

    def _tensor_state_names(self) -> list[str]:
        return [k for k, v in vars(self).items() if isinstance(v, Tensor)]

    def state_dict(self) -> dict:
        """Algorithm state that checkpoints must carry (tensors cloned, scalars as is)."""
        state = {}
        for key in self.state_names:
            value = getattr(self, key)
            state[key] = value.detach().clone() if isinstance(value, Tensor) else value
        return state

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.state_names) - set(state)
        if missing:
            raise KeyError(f"{self.name}: the saved algorithm state lacks {sorted(missing)}; was it "
                           f"written by another algorithm or an older version of {self.name}?")
        for key, value in state.items():
            current = getattr(self, key)
            if isinstance(current, Tensor) and isinstance(value, Tensor):
                setattr(self, key, value.to(current.device, current.dtype).clone())
            elif isinstance(value, Tensor):   # state that starts as None (e.g. Dash's rho_hat)
                setattr(self, key, value.to(self.device).clone())
            else:
                setattr(self, key, value)


def forward_views(model: nn.Module, *views: Tensor) -> list[Tensor]:
    """Run several batches through the model as one concatenated batch (one BatchNorm batch)."""
    sizes = [v.shape[0] for v in views]
    logits = model(torch.cat(views))
    return list(logits.split(sizes))


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave BatchNorm running statistics untouched.

    In training mode BatchNorm still normalises with the batch statistics (as USB's
    `freeze_bn`); it only stops updating running_mean / running_var / num_batches_tracked.
    Eval mode is unaffected (it always uses the running statistics).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    for module in norms:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in norms:
            module.track_running_stats = True


def scalar(value: float, like: Tensor) -> Tensor:
    """A 0-dim float statistic on `like`'s device (a fill, not a host-to-device copy)."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


def supervised_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


def cross_entropy_per_sample(logits: Tensor, targets: Tensor) -> Tensor:
    """H(targets, softmax(logits)) per sample; targets are class indices or probability rows."""
    if targets.dim() == logits.dim():
        return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return F.cross_entropy(logits, targets, reduction="none")


def selection_stats(mask: Tensor, pseudo_labels: Tensor, true_labels: Tensor | None) -> dict[str, Tensor]:
    """Mask rate and, where the unlabeled labels are known, how many selected pseudo-labels are right.

    `mask` may be soft (SoftMatch weights); a sample counts as selected when its weight is >= 0.5.
    """
    selected = mask >= 0.5
    stats = {"mask_rate": mask.float().mean(), "n_selected": selected.sum()}
    if true_labels is not None:
        correct = (pseudo_labels == true_labels) & selected
        stats["n_selected_correct"] = correct.sum()
        stats["n_selected_wrong"] = selected.sum() - correct.sum()
        stats["pseudo_label_accuracy"] = (pseudo_labels == true_labels).float().mean()
    return stats
