"""Model registry: name -> constructor(num_classes, in_channels, **options). Each module lists
the networks it defines in its own `MODELS`; every option is given (params.yaml holds them)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import cnn, wrn

MODELS: dict[str, Callable[..., nn.Module]] = {**cnn.MODELS, **wrn.MODELS}


def build_model(name: str, num_classes: int, in_channels: int, **options) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)
