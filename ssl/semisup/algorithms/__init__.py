"""Algorithm registry: each algorithm is a short module registered by name."""
from __future__ import annotations

from .base import Algorithm, StepBatch, StepOutput

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`")
    ALGORITHMS[cls.name] = cls
    return cls


def build_algorithm(name: str, params: dict, *, num_classes: int, num_unlabeled: int,
                    num_labeled: int, total_steps: int) -> Algorithm:
    """Instantiate a registered algorithm with every one of its hyperparameters (params.yaml
    holds them; the constructors have no defaults)."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; registered: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](num_classes=num_classes, num_unlabeled=num_unlabeled,
                            num_labeled=num_labeled, total_steps=total_steps, **params)


# Importing the modules registers them.
from . import (supervised, fixmatch, flexmatch, dash, freematch, softmatch, uda,  # noqa: E402,F401
               pseudolabel, meanteacher)

__all__ = ["ALGORITHMS", "Algorithm", "StepBatch", "StepOutput", "build_algorithm", "register"]
