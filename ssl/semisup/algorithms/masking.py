"""Masking, pseudo-labelling and loss weights as plain functions of tensors.

Every algorithm module builds its step from these; tests call each one on hand-made tensors.
Nothing here reads a tensor back to the host: schedules take Python numbers (the step) and
return Python numbers or 0-dim tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# ---- shared -----------------------------------------------------------------------------------
def confidence_and_pseudo_labels(probs_weak: Tensor) -> tuple[Tensor, Tensor]:
    """q = max_c p_w and yhat = argmax_c p_w."""
    confidence, pseudo_labels = probs_weak.max(dim=-1)
    return confidence, pseudo_labels


def sharpen(logits: Tensor, T: float) -> Tensor:
    """Soft pseudo-labels softmax(logits / T); T < 1 sharpens."""
    return torch.softmax(logits / T, dim=-1)


def class_counts(labels: Tensor, num_bins: int) -> Tensor:
    """A bincount on the labels' device that never reads back to the host (torch.bincount on
    CUDA synchronises to find the largest label). Labels must lie in 0..num_bins-1."""
    counts = torch.zeros(num_bins, dtype=torch.long, device=labels.device)
    return counts.scatter_add_(0, labels, torch.ones_like(labels))


def fixed_threshold_mask(confidence: Tensor, tau: float) -> Tensor:
    """FixMatch, UDA, Pseudo-Label: mask = [q >= tau], as floats."""
    return (confidence >= tau).float()


def class_threshold_mask(confidence: Tensor, pseudo_labels: Tensor, thresholds: Tensor) -> Tensor:
    """Class-wise thresholds (FlexMatch, FreeMatch): mask = [q >= threshold[yhat]], as floats."""
    return (confidence >= thresholds[pseudo_labels]).float()


def linear_rampup(step: int, total_steps: int, fraction: float) -> float:
    """USB's unsupervised weight ramp: clip(t / (fraction * T_total), 0, 1)."""
    if fraction <= 0:
        return 1.0
    return min(max(step / (fraction * total_steps), 0.0), 1.0)


# ---- FlexMatch --------------------------------------------------------------------------------
def flexmatch_thresholds(sigma: Tensor, num_classes: int, tau: float, threshold_warmup: bool) -> Tensor:
    """Class thresholds tau * M(beta_c), M(x) = x / (2 - x), from the per-sample states sigma.

    n_c = #{i: sigma_i = c} (counted on sigma's device; sigma_i = -1 means "never confident").
    beta_c = n_c / max(max_c n_c, n_unused) with threshold warm-up, n_c / max_c n_c without.
    """
    counts = class_counts(sigma + 1, num_classes + 1)
    n_unused, n_class = counts[0], counts[1:]
    normaliser = n_class.max()
    if threshold_warmup:
        normaliser = torch.maximum(normaliser, n_unused)
    beta = n_class.float() / normaliser.clamp(min=1).float()
    return tau * beta / (2.0 - beta)


def flexmatch_record(sigma: Tensor, indices: Tensor, confidence: Tensor, pseudo_labels: Tensor,
                     tau: float) -> None:
    """In place: sigma[i] = yhat of the batch's last confident (q >= tau) occurrence of sample i;
    a sample with no confident occurrence keeps its record.

    A batch can hold a sample twice (one that spans an epoch boundary, a sampler with
    replacement): a later non-confident view must not undo a confident one. Every occurrence of
    an index therefore writes the same value (the last confident prediction, else the record as
    it was), so the scatter is deterministic on any device, with no duplicate writes racing and
    nothing read back to the host. "Last" is batch order, as the references' CPU index_put."""
    confident = confidence >= tau
    position = torch.arange(1, len(indices) + 1, device=indices.device)   # 0: none
    same_sample = indices[:, None] == indices[None, :]
    last_confident = ((same_sample & confident[None, :]) * position[None, :]).amax(dim=1)
    recorded = pseudo_labels[(last_confident - 1).clamp(min=0)]
    sigma[indices] = torch.where(last_confident > 0, recorded, sigma[indices])


# ---- Dash -------------------------------------------------------------------------------------
def _at_least(value, minimum: float):
    return value.clamp(min=minimum) if isinstance(value, Tensor) else max(value, minimum)


def dash_rho_official(epoch: int, rho_hat, gamma: float, rho_min: float, warmup_epochs: int):
    """Dash `official`: rho_t = max(rho_hat * gamma^(-floor((t-1)/9)), rho_min), t the epoch index.

    During the warm-up epochs (t < warmup_epochs) there is no effective threshold: inf.
    `rho_hat` may be a float or a 0-dim tensor; the result has the same kind.
    """
    if epoch < warmup_epochs:
        return math.inf
    return _at_least(rho_hat * gamma ** (-((epoch - 1) // 9)), rho_min)


def dash_rho_usb(step: int, rho_hat, gamma: float, C: float, rho_min: float, warmup_steps: int,
                 steps_per_epoch: int):
    """Dash `usb`: after warm-up, every 10 epochs rho = max(C * gamma^(-k) * rho_hat, rho_min), k += 1.

    k counts the updates made before this one: k = floor((step - warmup_steps) / (10 epochs)), so
    the first SSL step uses k = 0.
    """
    k = (step - warmup_steps) // (10 * steps_per_epoch)
    return _at_least(C * gamma ** (-k) * rho_hat, rho_min)


def dash_mask_official(confidence: Tensor, rho) -> Tensor:
    """Dash `official`: keep a sample if -log q < rho (rho = inf keeps every sample)."""
    return (-torch.log(confidence) < rho).float()


def dash_mask_usb(logits_weak: Tensor, pseudo_targets: Tensor, rho) -> Tensor:
    """Dash `usb`: keep a sample if H(pseudo, p_w) <= rho (pseudo: class indices or soft rows)."""
    if pseudo_targets.dim() == logits_weak.dim():
        loss = -(pseudo_targets * F.log_softmax(logits_weak, dim=-1)).sum(dim=-1)
    else:
        loss = F.cross_entropy(logits_weak, pseudo_targets, reduction="none")
    return (loss <= rho).float()


# ---- FreeMatch --------------------------------------------------------------------------------
def freematch_update(tau_global: Tensor, p_model: Tensor, label_hist: Tensor, probs_weak: Tensor,
                     momentum: float) -> tuple[Tensor, Tensor, Tensor]:
    """Fold one batch into FreeMatch's EMAs: the global confidence tau_g, the mean class
    probabilities p_model and the pseudo-label histogram. Returns new tensors."""
    confidence, pseudo_labels = confidence_and_pseudo_labels(probs_weak)
    num_classes = probs_weak.shape[-1]
    histogram = class_counts(pseudo_labels, num_classes).to(p_model.dtype)
    tau_global = momentum * tau_global + (1 - momentum) * confidence.mean()
    p_model = momentum * p_model + (1 - momentum) * probs_weak.mean(dim=0)
    label_hist = momentum * label_hist + (1 - momentum) * histogram / histogram.sum()
    return tau_global, p_model, label_hist


def freematch_thresholds(tau_global: Tensor, p_model: Tensor) -> Tensor:
    """Local thresholds tau_c = tau_g * p_model_c / max_c p_model."""
    return tau_global * p_model / p_model.max()


# ---- SoftMatch --------------------------------------------------------------------------------
def distribution_alignment(probs: Tensor, p_model: Tensor, p_target: Tensor) -> Tensor:
    """Rescale p by p_target / p_model per class and renormalise (the 1e-6 guards are USB's)."""
    aligned = probs * (p_target + 1e-6) / (p_model + 1e-6)
    return aligned / aligned.sum(dim=-1, keepdim=True)


def ema_update(average: Tensor, value: Tensor, momentum: float) -> Tensor:
    return momentum * average + (1 - momentum) * value


def softmatch_update(mu: Tensor, var: Tensor, confidence: Tensor, momentum: float) -> tuple[Tensor, Tensor]:
    """EMA of the mean and the unbiased variance of the (aligned) confidences q."""
    return (ema_update(mu, confidence.mean(), momentum),
            ema_update(var, confidence.var(unbiased=True), momentum))


def softmatch_weights(confidence: Tensor, mu: Tensor, var: Tensor, n_sigma: float) -> Tensor:
    """Truncated Gaussian weight exp(-(min(q - mu, 0))^2 / (2 var / n_sigma^2)): 1 above mu."""
    below = torch.clamp(confidence - mu, max=0.0)
    return torch.exp(-below ** 2 / (2 * var / n_sigma ** 2))


# ---- UDA --------------------------------------------------------------------------------------
TSA_SCHEDULES = ("none", "linear", "exp", "log")


def tsa_threshold(schedule: str, progress: float, num_classes: int) -> float:
    """Training Signal Annealing: eta_t = alpha_t (1 - 1/C) + 1/C, progress = t / T_total.

    alpha_t: linear t/T, exp exp(5 (t/T - 1)), log 1 - exp(-5 t/T); `none` keeps everything (1).
    """
    if schedule == "none":
        return 1.0
    alpha = {"linear": lambda: progress,
             "exp": lambda: math.exp((progress - 1) * 5),
             "log": lambda: 1 - math.exp(-progress * 5)}[schedule]()
    return alpha * (1 - 1 / num_classes) + 1 / num_classes
