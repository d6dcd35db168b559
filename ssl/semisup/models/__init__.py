"""Model registry: name -> constructor(num_classes, in_channels, **options)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .cnn import SmallCNN

MODELS: dict[str, Callable[..., nn.Module]] = {"small_cnn": SmallCNN}


def build_model(name: str, num_classes: int, in_channels: int, **options) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)
