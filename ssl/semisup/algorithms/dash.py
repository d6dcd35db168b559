"""Dash (Xu et al., ICML 2021): keep an unlabeled sample only while its loss is below a threshold
rho_t that decays geometrically from rho_hat, an estimate of the loss after warm-up.

Two variants (ALGORITHMS.md):
  `official` (the paper's code, on FixMatch-TF): warm-up = ordinary SSL keeping every sample for
      `warmup_epochs`; rho_hat = mean per-sample unsupervised loss of the last warm-up epoch's
      most recent values; rho_t = max(rho_hat * gamma^(-floor((t-1)/9)), rho_min), t = epoch;
      keep [-log q < rho_t]; unsup = 0.9 * sum(H(pseudo, p_s) * mask) / max(sum(mask), 1).
  `usb` (semilearn): `warmup_steps` supervised-only steps; rho_hat = an evaluation loss at the
      end of warm-up; rho = max(C * gamma^(-k) * rho_hat, rho_min), k += 1 every 10 epochs;
      keep [H(pseudo, p_w) <= rho]; unsup averaged over all mu*B samples.
In both, pseudo = softmax(logits_w / T), one-hot argmax once rho has reached rho_min.

Where the references disagree (parameters, documented in the schema):
  rho_hat_window (official): `official` averages the most recent N_unlabeled - N_labeled losses
      (the code's `total_train_num - labeled_num`: about the last 112 steps of warm-up on
      CIFAR-10), `unlabeled_set` the most recent N_unlabeled (one pass's worth, as the paper reads).
  rho_hat_model (usb): `ema` is the EMA model's evaluation loss after warm-up; `initial_weights`
      is what semilearn 0.3.2 really computes: its warm-up creates an EMA that it never updates,
      so the loss is that of the initial weights with the warmed-up BatchNorm statistics.
semilearn's warm-up also runs 2,049 steps and then restarts the step count for the full schedule;
here warm-up steps count towards train.steps, and the trainer evaluates at the end of warm-up
(`evaluation_steps`) whatever train.eval_every is.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import StepBatch, StepContext, StepOutput, Views, cross_entropy_per_sample, scalar, supervised_loss
from .components import FeatureQueue
from .masking import (confidence_and_pseudo_labels, dash_mask_official, dash_mask_usb,
                      dash_rho_official, dash_rho_usb, sharpen)
from .weak_to_strong import PseudoLabels, WeakToStrong

VARIANTS = ("official", "usb")
RHO_HAT_WINDOWS = ("official", "unlabeled_set")
RHO_HAT_MODELS = ("ema", "initial_weights")
OFFICIAL_LOSS_FACTOR = 0.9   # the official code scales its unsupervised loss by 0.9
WARMUP_VIEWS = Views(labeled=("weak",), unlabeled=())   # usb's warm-up: labels only


@register
class Dash(WeakToStrong):
    name = "dash"
    display_name = "Dash"
    reference = "official: idstcv/Dash (on FixMatch-TF); usb: semilearn 0.3.2"
    figures = ("pseudo_labels", "dash_rho", "selection")
    hyperparameters = """
      variant: {enum: [official, usb],
                description: "official (the paper's code, on FixMatch-TF) or usb (semilearn)."}
      T: {description: Sharpening temperature of the soft pseudo-label., type: number, exclusiveMinimum: 0}
      gamma: {description: Decay base of rho., type: number, minimum: 1}
      C: {type: number, exclusiveMinimum: 0,
          description: "usb: constant of the schedule rho = C gamma^-k rho_hat."}
      rho_min: {type: number, exclusiveMinimum: 0,
                description: Lower bound of rho; pseudo-labels become one-hot there.}
      warmup_epochs: {type: integer, minimum: 1,
                      description: "official: epochs of warm-up (no effective threshold)."}
      warmup_steps: {type: integer, minimum: 0,
                     description: "usb: supervised-only warm-up steps (evaluated at their end: rho_hat)."}
      steps_per_epoch: {type: integer, minimum: 1,
                        description: Steps per epoch of the rho schedule (1024 in the paper).}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
      rho_hat_window:
        description: >-
          official: which warm-up losses rho_hat averages. `official`: the most recent
          N_unlabeled - N_labeled per-sample losses of the last warm-up epoch (the code's
          total_train_num - labeled_num; about its last 112 steps on CIFAR-10);
          `unlabeled_set`: the most recent N_unlabeled (one pass's worth).
        enum: [official, unlabeled_set]
      rho_hat_model:
        description: >-
          usb: whose evaluation loss at the end of warm-up is rho_hat. `ema`: the EMA model
          (updated during warm-up); `initial_weights`: what semilearn 0.3.2 really computes
          (its warm-up never updates the EMA it creates): the initial weights with the
          warmed-up BatchNorm statistics.
        enum: [ema, initial_weights]
    """
    state_names = ("rho_hat", "initial_parameters")

    def __init__(self, *, variant: str, T: float, gamma: float, C: float, rho_min: float,
                 warmup_epochs: int, warmup_steps: int, steps_per_epoch: int,
                 rho_hat_window: str, rho_hat_model: str, **base):
        super().__init__(**base)
        for key, value, allowed in (("variant", variant, VARIANTS),
                                    ("rho_hat_window", rho_hat_window, RHO_HAT_WINDOWS),
                                    ("rho_hat_model", rho_hat_model, RHO_HAT_MODELS)):
            if value not in allowed:
                raise ValueError(f"dash: {key} {value!r} is not one of {allowed}")
        if variant == "official" and warmup_epochs < 1:
            raise ValueError("dash (official): warmup_epochs must be >= 1: rho_hat is the mean "
                             "loss of the last warm-up epoch")
        self.variant, self.T, self.gamma, self.C, self.rho_min = variant, T, gamma, C, rho_min
        self.warmup_epochs, self.warmup_steps = warmup_epochs, warmup_steps
        self.steps_per_epoch, self.rho_hat_model = steps_per_epoch, rho_hat_model
        self.rho_hat: Tensor | float | None = None
        self.initial_parameters: list[Tensor] | None = None   # usb + initial_weights only
        if variant == "official":   # the most recent per-sample unsupervised losses of warm-up
            self.warmup_losses = FeatureQueue(self.rho_hat_window_size(rho_hat_window))

    def rho_hat_window_size(self, rho_hat_window: str) -> int:
        window = self.num_unlabeled - (self.num_labeled if rho_hat_window == "official" else 0)
        if window < 1:
            raise ValueError(f"dash (official): rho_hat_window 'official' averages N_unlabeled - "
                             f"N_labeled = {window} losses; use 'unlabeled_set'")
        return window

    # ---- the trainer's hooks ------------------------------------------------------------------
    def views_at(self, step: int) -> Views:
        return WARMUP_VIEWS if self.variant == "usb" and step < self.warmup_steps else self.views

    def evaluation_steps(self) -> tuple[int, ...]:
        return (self.warmup_steps,) if self.variant == "usb" and self.warmup_steps > 0 else ()

    def setup(self, network) -> None:
        if self.variant == "usb" and self.rho_hat_model == "initial_weights":
            self.initial_parameters = [p.detach().clone() for p in network.parameters()]

    def on_evaluation(self, step: int, metrics: dict[str, float], network, evaluate) -> None:
        # usb: the last evaluation at or before the end of warm-up gives rho_hat.
        if self.variant != "usb" or step > self.warmup_steps:
            return
        if self.rho_hat_model == "ema":
            self.rho_hat = float(metrics["ema/loss"])
            return
        probe = copy.deepcopy(network)   # the trained BatchNorm statistics, the initial weights
        with torch.no_grad():
            for parameter, initial in zip(probe.parameters(), self.initial_parameters, strict=True):
                parameter.copy_(initial)
        self.rho_hat = float(evaluate(probe)["loss"])

    # ---- rho --------------------------------------------------------------------------------------
    def recorded_mean(self) -> Tensor:
        if self.warmup_losses.count == 0:
            raise RuntimeError("dash (official): no unsupervised losses were recorded in the last "
                               "warm-up epoch, so rho_hat is undefined; start the run from step 0")
        return self.warmup_losses.filled().mean()

    def rho(self, step: int):
        if self.variant == "official":
            epoch = step // self.steps_per_epoch
            if epoch >= self.warmup_epochs and self.rho_hat is None:
                self.rho_hat = self.recorded_mean()
            return dash_rho_official(epoch, self.rho_hat, self.gamma, self.rho_min, self.warmup_epochs)
        if self.rho_hat is None:
            raise RuntimeError(
                f"dash (usb): no evaluation reached Dash by the end of its warm-up (step "
                f"{self.warmup_steps}; the trainer evaluates there, see evaluation_steps), so "
                f"rho_hat is undefined; with warmup_steps 0 there is no warm-up to evaluate")
        return dash_rho_usb(step, self.rho_hat, self.gamma, self.C, self.rho_min,
                            self.warmup_steps, self.steps_per_epoch)

    @staticmethod
    def stat(value: Tensor | float | None, like: Tensor) -> Tensor:
        """rho or rho_hat as a logged statistic: NaN while undefined (warm-up), no host sync."""
        if isinstance(value, Tensor):
            return value.detach().float()
        return scalar(math.nan if value is None or not math.isfinite(value) else value, like)

    # ---- one step -------------------------------------------------------------------------------
    def training_step(self, ctx: StepContext, batch: StepBatch) -> StepOutput:
        if batch.unlabeled is None:   # usb's supervised warm-up: the labeled batch only
            (x_lb,) = batch.labeled.views
            loss = supervised_loss(ctx.network(x_lb).logits.float(), batch.labeled.labels)
            return StepOutput(loss, {"loss_sup": loss.detach()})
        return super().training_step(ctx, batch)

    def pseudo_label(self, logits_weak, step, unlabeled_indices) -> PseudoLabels:
        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_weak, dim=-1))
        rho = self.rho(step)
        soft_targets = sharpen(logits_weak, self.T)
        hard_targets = F.one_hot(pseudo_labels, self.num_classes).to(soft_targets.dtype)
        if isinstance(rho, Tensor):
            targets = torch.where(rho <= self.rho_min, hard_targets, soft_targets)
        else:
            targets = hard_targets if rho <= self.rho_min else soft_targets
        if self.variant == "official":   # keep -log q < rho
            mask = dash_mask_official(confidence, rho)
        else:                            # keep H(targets, p_w) <= rho
            mask = dash_mask_usb(logits_weak, targets, rho)
        stats = {"rho": self.stat(rho, logits_weak), "rho_hat": self.stat(self.rho_hat, logits_weak)}
        return PseudoLabels(targets, mask, pseudo_labels, stats)

    def unlabeled_loss(self, logits_strong, pseudo: PseudoLabels, step: int) -> Tensor:
        if self.variant == "usb":        # averaged over all mu * B samples
            return super().unlabeled_loss(logits_strong, pseudo, step)
        # official: 0.9 x the mean over the kept samples; the losses of the last warm-up epoch
        # are recorded for rho_hat.
        per_sample = cross_entropy_per_sample(logits_strong, pseudo.targets)
        if step // self.steps_per_epoch == self.warmup_epochs - 1:
            self.warmup_losses.push(per_sample.float())
        mask = pseudo.mask
        return OFFICIAL_LOSS_FACTOR * (per_sample * mask).sum() / mask.sum().clamp(min=1)
