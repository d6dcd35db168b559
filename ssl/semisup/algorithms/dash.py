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
here warm-up steps count towards train.steps.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import register
from .base import (Algorithm, StepBatch, StepOutput, cross_entropy_per_sample, forward_views,
                   scalar, selection_stats, supervised_loss)
from .masking import (confidence_and_pseudo_labels, dash_mask_official, dash_mask_usb,
                      dash_rho_official, dash_rho_usb, sharpen)

VARIANTS = ("official", "usb")
RHO_HAT_WINDOWS = ("official", "unlabeled_set")
RHO_HAT_MODELS = ("ema", "initial_weights")
OFFICIAL_LOSS_FACTOR = 0.9   # the official code scales its unsupervised loss by 0.9


@register
class Dash(Algorithm):
    name = "dash"
    state_names = ("rho_hat", "loss_buffer", "n_recorded", "initial_parameters")

    def __init__(self, *, variant: str, T: float, gamma: float, C: float, rho_min: float,
                 warmup_epochs: int, warmup_steps: int, steps_per_epoch: int, lambda_u: float,
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
        self.steps_per_epoch, self.lambda_u = steps_per_epoch, lambda_u
        self.rho_hat_model = rho_hat_model
        self.rho_hat: Tensor | float | None = None
        # official: the most recent per-sample unsupervised losses of warm-up (a ring buffer).
        window = self.num_unlabeled - (self.num_labeled if rho_hat_window == "official" else 0)
        if variant == "official" and window < 1:
            raise ValueError(f"dash (official): rho_hat_window 'official' averages N_unlabeled - "
                             f"N_labeled = {window} losses; use 'unlabeled_set'")
        self.loss_buffer = torch.zeros(window if variant == "official" else 0)
        self.n_recorded = 0
        self.initial_parameters: list[Tensor] | None = None   # usb + initial_weights only

    # ---- the trainer's hooks ------------------------------------------------------------------
    def supervised_only(self, step: int) -> bool:
        return self.variant == "usb" and step < self.warmup_steps

    def setup(self, model) -> None:
        if self.variant == "usb" and self.rho_hat_model == "initial_weights":
            self.initial_parameters = [p.detach().clone() for p in model.parameters()]

    def on_evaluation(self, step: int, metrics: dict[str, float], model, evaluate) -> None:
        # usb: the last evaluation at or before the end of warm-up gives rho_hat.
        if self.variant != "usb" or step > self.warmup_steps:
            return
        if self.rho_hat_model == "ema":
            self.rho_hat = float(metrics["ema/loss"])
            return
        probe = copy.deepcopy(model)   # the trained BatchNorm statistics, the initial weights
        with torch.no_grad():
            for parameter, initial in zip(probe.parameters(), self.initial_parameters, strict=True):
                parameter.copy_(initial)
        self.rho_hat = float(evaluate(probe)["loss"])

    # ---- official: recording the warm-up losses -------------------------------------------------
    def record_losses(self, losses: Tensor) -> None:
        size = self.loss_buffer.numel()
        losses = losses.detach().float()[-size:]
        positions = (self.n_recorded + torch.arange(len(losses), device=losses.device)) % size
        self.loss_buffer[positions] = losses.to(self.loss_buffer.device)
        self.n_recorded += len(losses)

    def recorded_mean(self) -> Tensor:
        if self.n_recorded == 0:
            raise RuntimeError("dash (official): no unsupervised losses were recorded in the last "
                               "warm-up epoch, so rho_hat is undefined; start the run from step 0")
        return self.loss_buffer[:min(self.n_recorded, self.loss_buffer.numel())].mean()

    def rho(self, step: int):
        if self.variant == "official":
            epoch = step // self.steps_per_epoch
            if epoch >= self.warmup_epochs and self.rho_hat is None:
                self.rho_hat = self.recorded_mean()
            return dash_rho_official(epoch, self.rho_hat, self.gamma, self.rho_min, self.warmup_epochs)
        if self.rho_hat is None:
            raise RuntimeError(
                "dash (usb): no evaluation of the EMA model happened by the end of warm-up (step "
                f"{self.warmup_steps}), so rho_hat is undefined; make train.eval_every divide "
                "the algorithm's warmup_steps")
        return dash_rho_usb(step, self.rho_hat, self.gamma, self.C, self.rho_min,
                            self.warmup_steps, self.steps_per_epoch)

    @staticmethod
    def stat(value: Tensor | float | None, like: Tensor) -> Tensor:
        """rho or rho_hat as a logged statistic: NaN while undefined (warm-up), no host sync."""
        if isinstance(value, Tensor):
            return value.detach().float()
        return scalar(math.nan if value is None or not math.isfinite(value) else value, like)

    # ---- one step -------------------------------------------------------------------------------
    def training_step(self, model, batch: StepBatch, step: int, teacher=None) -> StepOutput:
        logits_lb, logits_w, logits_s = forward_views(
            model, batch.labeled_images, batch.weak_images, batch.strong_images)
        loss_sup = supervised_loss(logits_lb, batch.labels)
        logits_w = logits_w.detach()
        confidence, pseudo_labels = confidence_and_pseudo_labels(torch.softmax(logits_w, dim=-1))

        rho = self.rho(step)
        soft_targets = sharpen(logits_w, self.T)
        hard_targets = F.one_hot(pseudo_labels, self.num_classes).to(soft_targets.dtype)
        if isinstance(rho, Tensor):
            targets = torch.where(rho <= self.rho_min, hard_targets, soft_targets)
        else:
            targets = hard_targets if rho <= self.rho_min else soft_targets

        if self.variant == "official":
            mask = dash_mask_official(confidence, rho)
            per_sample = cross_entropy_per_sample(logits_s, targets)
            loss_unsup = OFFICIAL_LOSS_FACTOR * (per_sample * mask).sum() / mask.sum().clamp(min=1)
            if step // self.steps_per_epoch == self.warmup_epochs - 1:
                self.record_losses(per_sample)
        else:
            mask = dash_mask_usb(logits_w, targets, rho)
            loss_unsup = (cross_entropy_per_sample(logits_s, targets) * mask).mean()

        stats = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(),
                 "rho": self.stat(rho, loss_sup), "rho_hat": self.stat(self.rho_hat, loss_sup)}
        stats.update(selection_stats(mask, pseudo_labels, batch.unlabeled_labels))
        return StepOutput(loss_sup + self.lambda_u * loss_unsup, stats)
