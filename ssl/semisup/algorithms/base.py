"""The algorithm interface: one training step's loss and statistics, plus explicit state."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

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
    """

    name: ClassVar[str] = ""
    uses_unlabeled: ClassVar[bool] = True
    second_view: ClassVar[str | None] = "strong"
    needs_teacher: ClassVar[bool] = False

    def __init__(self, num_classes: int, num_unlabeled: int, total_steps: int):
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled
        self.total_steps = total_steps

    def training_step(self, model: nn.Module, batch: StepBatch, step: int,
                      teacher: nn.Module | None = None) -> StepOutput:
        raise NotImplementedError

    def supervised_only(self, step: int) -> bool:
        """True while the algorithm trains on labeled data only (e.g. Dash `usb` warm-up)."""
        return False

    def on_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Called by the trainer after each evaluation (Dash `usb` reads the EMA eval loss)."""

    def to(self, device: torch.device) -> "Algorithm":
        """Move tensor state to `device`. Subclasses with tensor state override `_tensors`."""
        for key in self._tensor_state_names():
            setattr(self, key, getattr(self, key).to(device))
        return self

    def _tensor_state_names(self) -> list[str]:
        return [k for k, v in vars(self).items() if isinstance(v, Tensor)]

    def state_dict(self) -> dict:
        """Algorithm state that checkpoints must carry (tensors cloned, scalars as is)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if isinstance(current, Tensor):
                setattr(self, key, value.to(current.device, current.dtype))
            else:
                setattr(self, key, value)


def forward_views(model: nn.Module, *views: Tensor) -> list[Tensor]:
    """Run several batches through the model as one concatenated batch (one BatchNorm batch)."""
    sizes = [v.shape[0] for v in views]
    logits = model(torch.cat(views))
    return list(logits.split(sizes))


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
