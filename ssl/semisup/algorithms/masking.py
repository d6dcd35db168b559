"""Masking and pseudo-labelling as plain functions of tensors (tests call them by hand)."""
from __future__ import annotations

from torch import Tensor


def confidence_and_pseudo_labels(probs_weak: Tensor) -> tuple[Tensor, Tensor]:
    """q = max_c p_w and yhat = argmax_c p_w."""
    confidence, pseudo_labels = probs_weak.max(dim=-1)
    return confidence, pseudo_labels


def fixed_threshold_mask(confidence: Tensor, tau: float) -> Tensor:
    """FixMatch: mask = [q >= tau], as floats."""
    return (confidence >= tau).float()
