"""Model registry: name -> constructor(num_classes, in_channels, **options)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .cnn import SmallCNN
from .wrn import wrn_28_2, wrn_28_8, wrn_37_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "wrn_28_2": wrn_28_2,
    "wrn_28_8": wrn_28_8,
    "wrn_37_2": wrn_37_2,
}


def build_model(name: str, num_classes: int, in_channels: int, **options) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)
