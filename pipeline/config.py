"""Load the study parameters (params.yaml + --configfile overrides, checked by
pipeline/validation.py) and resolve what each run of the study computes (RunConfig).

Kept free of torch: the Snakefile reads the study through it in a fraction of a second."""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semisup.catalog import DATASETS

from .errors import ConfigError
from .run_config import RunConfig
from .validation import COMMAND_LINE, set_on_command_line, validate
from .variants import algorithm_of, row_algorithm_params, row_labels, variants_of

ROOT = Path(__file__).resolve().parent.parent

# Settings of where a training job runs, not of what it computes: a run's config (and its hash)
# leaves them out, the job gets them once on its command line, and MLflow records what it used.
EXECUTION_KEYS = ("device", "threads")


def deep_merge(base: dict, override: dict) -> dict:
    """Nested dicts merge key by key; any other value (lists included) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML (and
    so Snakemake's --configfile) keeps the last value and drops the other one silently."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue   # the base loader names an unhashable key
            line = key_node.start_mark.line + 1
            if key in lines:
                raise DuplicateKey(f"the key {key!r} is given twice in one mapping (lines "
                                   f"{lines[key]} and {line}); YAML would keep the second value "
                                   f"and ignore the first silently. Keep one of them")
            lines[key] = line
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.YAMLError):
    pass


def read_yaml(text: str, source: str):
    """YAML (or JSON) text, a key given twice refused: ConfigError naming `source`."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)   # a SafeLoader: no Python objects
    except DuplicateKey as error:
        raise ConfigError(f"{source}: {error}, and rerun.") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML or JSON: {error}") from error


def load_params(*paths: str | Path) -> dict:
    """Read params files in order, each merged on top of the previous one."""
    config: dict = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except FileNotFoundError as error:
            raise ConfigError(f"the config file {path} does not exist") from error
        data = read_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a {type(data).__name__}, not a mapping of keys "
                              f"(study:, train:, ...); see params.yaml")
        config = deep_merge(config, data)
    return config


def command_line_overrides(entries: list[str] | None) -> dict:
    """`snakemake --config key=value ...` as the values they are: Snakemake reads the value of
    `train='{"steps": 200}'` with YAML's BaseLoader, which makes every nested number and boolean
    a string; each value is read again here as YAML (numbers, booleans, lists, mappings)."""
    overrides: dict = {}
    for entry in entries or []:
        key, separator, text = entry.partition("=")
        if not separator:
            raise ConfigError(f"--config {entry!r}: an entry must be key=value, e.g. "
                              f"--config train='{{\"steps\": 200}}'")
        value = read_yaml(text, f"--config {entry!r}") if text else None
        overrides = deep_merge(overrides, {key: value})
    return overrides


def setting_source(key_path: tuple[str, ...], configfiles: list[str | Path],
                   command_line: dict | None, root: Path = ROOT) -> str:
    """Where the value at key_path came from: the command line, else the last config file that
    sets it (relative to the project folder), else params.yaml."""
    if set_on_command_line(command_line, key_path):
        return COMMAND_LINE
    for path in reversed([Path(f) for f in configfiles]):
        node = read_yaml(path.read_text(), str(path)) or {}
        for part in key_path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            resolved = path.resolve()
            return str(resolved.relative_to(root) if resolved.is_relative_to(root) else path)
    return "params.yaml"



def canonical_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# Options added to the run config after runs were made, each with the value that makes what the
# runs made before it: while a run holds that value, the option is left out of its hash (not out
# of its config), so adding an option renames no earlier run and keeps its MLflow history.
HASH_NEUTRAL = {("train", "optimizer"): "sgd", ("train", "layer_decay"): 1.0,
                ("train", "lr_schedule"): "cosine", ("train", "lr_warmup_steps"): 0,
                ("algorithm_params", "batchnorm"): "joint",   # Mean Teacher's
                ("train", "ctaugment"): {"depth": 2, "threshold": 0.8, "decay": 0.99,
                                         "probe_network": "ema", "translate": "pixels"},
                # semilearn's per-dataset image augmentation (EuroSAT, TissueMNIST, Semi-Aves)
                ("train", "vertical_flip"): False, ("train", "rand_augment_ops"): "all",
                ("train", "crop_size"): None, ("train", "strong_crop"): "pad_crop",
                ("train", "resized_crop_scale"): [0.08, 1.0],
                ("train", "resized_crop_ratio"): [0.75, 4 / 3]}


def run_hash(run: dict) -> str:
    """canonical_hash of a run config without the options that hold their neutral values."""
    hashed = copy.deepcopy(run)
    for (section, key), neutral in HASH_NEUTRAL.items():
        if key in hashed.get(section, {}) and hashed[section][key] == neutral:
            del hashed[section][key]
    return canonical_hash(hashed)


@dataclass(frozen=True)
class Study:
    """The validated config with the paths and per-run settings the workflow needs."""

    config: dict
    # Each run's RunConfig, made once: the Snakefile asks for a run's several times per job.
    runs: dict[tuple[str, int, str, int], RunConfig] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.config["study"]["name"]

    @property
    def dataset(self) -> str:
        return self.config["study"]["dataset"]

    @property
    def results_dir(self) -> str:
        return f"results/{self.name}"

    @property
    def reports_dir(self) -> str:
        """reports.dir, or reports/<study name> without one: a study never writes into another
        study's reports."""
        return self.config["reports"]["dir"] or f"reports/{self.name}"

    def dataset_options(self, dataset: str) -> dict:
        return self.config["datasets"][dataset]

    def data_key(self, dataset: str) -> str:
        """Names the raw data and splits made with this study's options of `dataset`: two
        studies with other options (another image folder, another test size) never share them."""
        return canonical_hash(self.dataset_options(dataset))[:12]

    def manifest_path(self, dataset: str) -> str:
        return f"data/raw/{dataset}/{self.data_key(dataset)}/manifest.json"

    def split_path(self, dataset: str, n_labels: int | str, seed: int | str) -> str:
        return f"data/splits/{dataset}/{self.data_key(dataset)}/{n_labels}/seed{seed}.json"

    @property
    def rows(self) -> list[str]:
        """study.algorithms: registered algorithms and variants, in the tables' order."""
        return self.config["study"]["algorithms"]

    def row_labels(self) -> dict[str, str]:
        """Each row's name in the reports (pipeline/variants.py)."""
        return row_labels(self.config)

    def row_algorithms(self) -> dict[str, str]:
        """Each row's registered algorithm (a variant's `algorithm`, else the row itself)."""
        return {row: algorithm_of(self.config, row) for row in self.rows}

    def run_config(self, dataset: str, n_labels: int | str, row: str,
                   seed: int | str) -> RunConfig:
        """The resolved configuration of one run (RunConfig) of a row (a registered algorithm
        or a variant), made once per run."""
        key = (dataset, int(n_labels), row, int(seed))
        if key not in self.runs:
            self.runs[key] = self.resolve_run(*key)
        return self.runs[key]

    def resolve_run(self, dataset: str, n_labels: int, row: str, seed: int) -> RunConfig:
        """A new RunConfig: the study's settings of this run (the algorithm's overrides of
        `train` applied, then a variant's; the dataset's flip filled in) and their hash. A
        variant's run records its name; a registered algorithm's run has no `variant` key at all,
        so that its config and hash are those it had before variants existed."""
        algorithm = algorithm_of(self.config, row)
        train = {**self.config["train"], **self.config["algorithm_overrides"].get(algorithm, {})}
        variant = variants_of(self.config).get(row)
        if variant:
            train = deep_merge(train, variant.get("train", {}))
        model = self.config["study"]["model"]
        run = copy.deepcopy({   # the order of RunConfig's fields
            "study": self.name, "dataset": dataset,
            "dataset_options": self.dataset_options(dataset),
            "n_labels": n_labels, "seed": seed,
            "algorithm": algorithm, "algorithm_params": row_algorithm_params(self.config, row),
            "model": model, "model_options": self.config["models"][model],
            "train": resolved_train(train, dataset, self.config.get("audio")),
            **({"variant": row} if variant else {}),
        })
        return RunConfig(**run, config_hash=run_hash(run))

    def execution(self) -> dict:
        """Where training jobs run (device, threads): given to each job on its command line."""
        return {key: self.config["train"][key] for key in EXECUTION_KEYS}


def resolved_train(train: dict, dataset: str, audio: dict | None = None) -> dict:
    """A run's training settings: the execution settings left out, the dataset's own flip
    (semisup.catalog) filled in unless the config sets one; for an audio dataset, the audio
    data layer's settings (params.yaml: audio) as `audio` instead of a flip."""
    resolved = {key: value for key, value in train.items() if key not in EXECUTION_KEYS}
    inputs = DATASETS[dataset].inputs
    if inputs.modality == "audio":
        resolved.setdefault("audio", copy.deepcopy(audio or {}))
    elif inputs.modality == "image":   # (text has no flips)
        resolved.setdefault("horizontal_flip", inputs.horizontal_flip)
    return resolved


def default_params() -> dict:
    """params.yaml: every dataset option, network option and hyperparameter with its default,
    for code that calls the library directly (tests, benchmarks, notebooks)."""
    return load_params(ROOT / "params.yaml")


def default_train_options(dataset: str, **overrides) -> dict:
    """params.yaml's training loop settings as semisup.train.TrainConfig takes them (execution
    settings and portable numerics left out, the dataset's flip filled in), with `overrides`."""
    train = resolved_train(default_params()["train"], dataset)
    train.pop("portable_numerics")   # the process's setting (pipeline.runs.train), not the loop's
    return {**train, **overrides}


def load_study(config: dict, source: str = "params.yaml",
               command_line: dict | None = None) -> Study:
    validate(config, source, command_line)
    return Study(config)
