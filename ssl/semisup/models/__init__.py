"""Model registry: name -> constructor(num_classes, inputs, **options) returning a Network
(backbone + classifier; semisup.models.network). `inputs` are the dataset's input facts
(semisup.catalog: an image dataset's channels, ...). Each module lists the networks it defines in
its own `MODELS`; every option is given (params.yaml holds them)."""
from __future__ import annotations

from collections.abc import Callable

from . import bert, cnn, speech, vit, wrn
from .network import NetOutput, Network

MODELS: dict[str, Callable[..., Network]] = {**cnn.MODELS, **wrn.MODELS, **vit.MODELS,
                                             **speech.MODELS, **bert.MODELS}


def build_network(name: str, num_classes: int, inputs, **options) -> Network:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, inputs=inputs, **options)


__all__ = ["MODELS", "NetOutput", "Network", "build_network"]
