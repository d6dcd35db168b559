"""What one run of a study computes: its resolved configuration (RunConfig), which travels to the
train job as a JSON file (--run-config), is hashed, logged to MLflow and written to metrics.json.
pipeline/config.py makes one per run (Study.run_config).

A module of its own, so that the train job's code (pipeline/code.py: the digest that reruns a
training run when it changes) holds what a run config is, not how params are loaded and checked:
editing those reruns no training."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

# Keys that a run config has only where they are set (RunConfig.as_dict).
OPTIONAL_KEYS = ("variant",)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers, every default filled in (the resolved
    configuration). Execution settings (pipeline.config.EXECUTION_KEYS) are not in it. Its
    mappings are its own copies: nothing else changes them."""

    study: str
    dataset: str
    dataset_options: dict
    n_labels: int
    seed: int
    algorithm: str
    algorithm_params: dict
    model: str
    model_options: dict
    train: dict
    config_hash: str   # of the other fields (pipeline.config.run_hash)
    # The variant (params.yaml's `variants:`) this run is a row of; None: the algorithm's own row.
    # Left out of as_dict (so of the hash, metrics.json and to_json) while None: a run of a
    # registered algorithm keeps the config and hash it had before variants existed.
    variant: str | None = None

    @property
    def row(self) -> str:
        """The table row this run belongs to: its variant, else its algorithm."""
        return self.variant or self.algorithm

    def as_dict(self) -> dict:
        """The fields in their order: the `run` of metrics.json, and what config_hash hashes
        (without config_hash itself); `variant` only where the run has one."""
        values = asdict(self)
        if self.variant is None:
            del values["variant"]
        return values

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "--run-config") -> RunConfig:
        """Read what to_json wrote; a text that is not one names what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{source}: the run config is not valid JSON ({error}); pass what "
                              f"the workflow writes (RunConfig.to_json)") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the run config is {type(data).__name__}, not a JSON "
                              f"object; pass what the workflow writes (RunConfig.to_json)")
        names = [each.name for each in fields(cls)]
        missing = [name for name in names if name not in data and name not in OPTIONAL_KEYS]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            problems = ([f"it lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                       ([f"{', '.join(map(repr, unknown))} is not a key of it"] if unknown else [])
            raise ConfigError(f"{source}: the run config is not one the workflow writes: "
                              f"{'; '.join(problems)}. Its keys are {', '.join(names)}; pass "
                              f"what RunConfig.to_json writes (the Snakefile's train rule does)")
        return cls(**data)

    @classmethod
    def read(cls, argument: str) -> RunConfig:
        """A train job's --run-config: the file the workflow wrote (to_json), or that JSON text
        itself (a text that begins with '{', for a run started by hand)."""
        if argument.lstrip().startswith("{"):
            return cls.from_json(argument)
        try:
            text = Path(argument).read_text()
        except FileNotFoundError as error:
            raise ConfigError(f"the run config file {argument} is missing; rerun snakemake, which "
                              f"writes every run's config file before its jobs start") from error
        return cls.from_json(text, source=argument)

    def components(self) -> dict[str, str]:
        """The registered components the run uses, by kind: what its training code digest is
        narrowed to (pipeline/code.py)."""
        return {"algorithm": self.algorithm, "dataset": self.dataset, "model": self.model}
