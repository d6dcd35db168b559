"""The algorithm contract: what an algorithm declares, what one training step sees, what it
returns.

An algorithm declares
  views          what each side of a step's batch needs, by kind, e.g. labeled ("weak",) and
                 unlabeled ("weak", "strong"); () on the unlabeled side draws no unlabeled batch.
                 The data layer (semisup.data.modality) makes them; `views_at(step)` may change
                 them over training (Dash `usb`'s supervised warm-up).
  heads          modules fed with the network's features (a projection, a rotation classifier):
                 the trainer adds them to the network before building the optimizer and the EMA
  needs_teacher  whether a step needs the EMA network (Mean Teacher)
  labeled_set    "split" (the split's labeled samples) or "all" (every training label: the
                 fully supervised upper bound)
  state          `state_names` and any shared component it holds (semisup.algorithms.components)
and implements `training_step(ctx, batch) -> StepOutput`. A step reads the batch, runs the
network (ctx.network; ctx.teacher), may draw random numbers from ctx.generator (a seeded stream
on the training device that checkpoints carry: VAT's noise, a permutation) or, for numbers drawn
on the host without reading the device (MixUp's lambda), ctx.host_generator (on the CPU, seeded
and checkpointed too), and may call torch.autograd.grad; it never touches the optimizer.

Where the strong augmentation learns from probes (CTAugment) and the step declares a strong view,
`batch.probe` holds that step's probe of the labeled samples (semisup.data.modality.Probe): the
trainer scores it with the network the augmentation names and updates the augmentation before the
step; an algorithm that wants the probe images (a loss on them, its own statistics) reads them
there. Otherwise `batch.probe` is None.

For the catalog (semisup.catalog reads these without importing torch, so each must be a literal
in the class body of a registered algorithm): `name`, `display_name`, `reference` (the codebase
it follows), `figures` (the report figures that show it), `hyperparameters` (a YAML mapping of
each constructor keyword to its JSON schema), `foreign_keys` (keys of the references that mean
something else here, with why).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.inputs import Inputs, batch_size, cat_inputs
from ..data.modality import DataFacts, Probe
from ..models.network import NetOutput
from .components import Stateful


@dataclass(frozen=True)
class Views:
    """The views of each side of a step's batch, by kind, in the order the step reads them."""

    labeled: tuple[str, ...] = ("weak",)
    unlabeled: tuple[str, ...] = ()


@dataclass
class Side:
    """One side of a step's batch. `views` in the order the algorithm declared them. Labeled:
    `labels` are the targets and `indices` the samples' positions in the labeled set
    (0 .. num_labeled - 1). Unlabeled: `labels` are the true labels (-1 where unknown), for
    statistics only, never for a loss, and `indices` the positions in the unlabeled set."""

    views: list[Inputs]
    labels: Tensor
    indices: Tensor


@dataclass
class StepBatch:
    labeled: Side
    unlabeled: Side | None = None   # None in a step that draws no unlabeled batch
    probe: Probe | None = None      # CTAugment's probe of the labeled samples, where there is one


@dataclass
class StepContext:
    network: nn.Module                  # the student (maybe compiled): inputs -> NetOutput
    step: int
    generator: torch.Generator          # random draws inside the step, on the training device
    teacher: nn.Module | None = None    # the EMA network, where the algorithm needs it
    host_generator: torch.Generator | None = None   # draws on the host (CPU); checkpointed


@dataclass
class StepOutput:
    """The loss to minimise and per-step statistics (0-dim tensors: no host synchronisation)."""

    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Algorithm(Stateful):
    """Base class; see the module docstring for what a subclass declares."""

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    figures: ClassVar[tuple[str, ...]] = ()
    hyperparameters: ClassVar[str] = "{}"
    foreign_keys: ClassVar[dict[str, str]] = {}
    views: ClassVar[Views] = Views(labeled=("weak",), unlabeled=("weak", "strong"))
    needs_teacher: ClassVar[bool] = False
    labeled_set: ClassVar[str] = "split"

    def __init__(self, *, facts: DataFacts, total_steps: int):
        self.facts = facts
        self.num_classes = facts.num_classes
        self.num_labeled = facts.num_labeled
        self.num_unlabeled = facts.num_unlabeled
        self.total_steps = total_steps
        self.device = torch.device("cpu")

    def views_at(self, step: int) -> Views:
        return self.views

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {}

    def evaluation_steps(self) -> tuple[int, ...]:
        """Steps at which the trainer must evaluate besides every eval_every steps (Dash `usb`
        takes rho_hat from the evaluation at the end of its warm-up)."""
        return ()

    def setup(self, network: nn.Module) -> None:
        """Called once with the freshly initialised network (heads included), before any step
        and before a checkpoint is loaded."""

    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        raise NotImplementedError

    def on_evaluation(self, step: int, metrics: dict[str, float], network: nn.Module,
                      evaluate: Callable[[nn.Module], dict[str, float]]) -> None:
        """Called by the trainer after each evaluation with its metrics, the raw network and a
        function that evaluates any network the same way (Dash `usb` reads rho_hat here)."""


def forward_outputs(network: nn.Module, *views: Inputs, want: tuple[str, ...] = ()) -> list[NetOutput]:
    """Run several batches through the network as one concatenated batch (one BatchNorm batch)
    and split its output: logits, features and the heads in `want`, per batch."""
    sizes = [batch_size(view) for view in views]
    output = network(cat_inputs(views), want=want)
    heads = {name: value.split(sizes) for name, value in output.heads.items()}
    return [NetOutput(logits, features, {name: parts[i] for name, parts in heads.items()})
            for i, (logits, features) in enumerate(zip(output.logits.split(sizes),
                                                       output.features.split(sizes), strict=True))]


def forward_views(network: nn.Module, *views: Inputs) -> list[Tensor]:
    """The logits of several batches run as one concatenated batch (one BatchNorm batch)."""
    sizes = [batch_size(view) for view in views]
    return list(network(cat_inputs(views)).logits.split(sizes))


@contextmanager
def frozen_batchnorm_statistics(network: nn.Module) -> Iterator[None]:
    """Forward passes inside leave BatchNorm running statistics untouched.

    In training mode BatchNorm still normalises with the batch statistics (as USB's
    `freeze_bn`); it only stops updating running_mean / running_var / num_batches_tracked.
    Eval mode is unaffected (it always uses the running statistics).
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
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
