"""Algorithm registry: each algorithm is a short module of this package, registered by name.
Every module here is imported with the package, so adding an algorithm is adding its module (and
its block in params.yaml); semisup.catalog reads the same modules without importing torch."""
from __future__ import annotations

import importlib
import pkgutil

from .base import Algorithm, DataFacts, Side, StepBatch, StepContext, StepOutput, Views

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`")
    if cls.name in ALGORITHMS and ALGORITHMS[cls.name] is not cls:
        raise ValueError(f"two algorithms are named {cls.name!r}: {ALGORITHMS[cls.name].__module__} "
                         f"and {cls.__module__}")
    ALGORITHMS[cls.name] = cls
    return cls


def build_algorithm(name: str, params: dict, *, facts: DataFacts, total_steps: int) -> Algorithm:
    """Instantiate a registered algorithm with every one of its hyperparameters (params.yaml
    holds them; the constructors have no defaults)."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; registered: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](facts=facts, total_steps=total_steps, **params)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "DataFacts", "Side", "StepBatch", "StepContext", "StepOutput",
           "Views", "build_algorithm", "register"]
