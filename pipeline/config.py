"""Load and validate the study parameters (params.yaml + --configfile overrides).

Kept free of torch so that the Snakefile can validate in a fraction of a second. The registries'
names are listed in the schema (enums); tests check that they match the code's registries.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from semisup.catalog import DATASETS

from .errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")

# Settings of where a training job runs, not of what it computes: a run's config (and its hash)
# leaves them out, the job gets them once on its command line, and MLflow records what it used.
EXECUTION_KEYS = ("device", "threads")

# Keys the references use that mean something else here: the schema rejects them, with this why.
FOREIGN_KEYS = {
    ("algorithms", "fixmatch", "T"): (
        "semilearn's FixMatch `T` (0.5 in its configs) sharpens soft pseudo-labels only and is "
        "unused with the hard labels FixMatch uses, so it is not a parameter here; dividing the "
        "logits by T before the threshold would change FixMatch's mask (another method). "
        "Remove algorithms.fixmatch.T"),
}


class ConfigError(UserError):
    pass


def _integer(checker, instance) -> bool:
    """An integer is an int: JSON Schema would also take 16.0, which torch then refuses."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# The schema's validator, with integers that are ints.
Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer))


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Nested dicts merge key by key; any other value (lists included) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_params(*paths: str | Path) -> dict:
    """Read params files in order, each merged on top of the previous one."""
    config: dict = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"the config file {path} does not exist") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
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
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--config {entry!r}: the value is not valid YAML or JSON: "
                              f"{error}") from error
        overrides = deep_merge(overrides, {key: value})
    return overrides


def _key_path(error) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
              "boolean": "true or false", "array": "a list", "object": "a mapping", "null": "null"}


def _allowed(schema: dict) -> str:
    if "x-allowed" in schema:   # the schema's own words for a pattern
        return schema["x-allowed"]
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    parts = []
    kinds = schema.get("type")
    if kinds:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        parts.append(" or ".join(TYPE_WORDS.get(kind, kind) for kind in kinds))
    for word, bound in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                        ("exclusiveMaximum", "<")):
        if word in schema:
            parts.append(f"{bound} {schema[word]}")
    if "pattern" in schema:
        parts.append(f"matching {schema['pattern']}")
    return " ".join(parts) or "see pipeline/params.schema.yaml"


COMMAND_LINE = "the command line (--config)"


def setting_source(key_path: tuple[str, ...], configfiles: list[str | Path],
                   command_line: dict | None, root: Path = ROOT) -> str:
    """Where the value at key_path came from: the command line, else the last config file that
    sets it (relative to the project folder), else params.yaml."""
    if set_on_command_line(command_line, key_path):
        return COMMAND_LINE
    for path in reversed([Path(f) for f in configfiles]):
        node = yaml.safe_load(path.read_text()) or {}
        for part in key_path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            resolved = path.resolve()
            return str(resolved.relative_to(root) if resolved.is_relative_to(root) else path)
    return "params.yaml"


def set_on_command_line(command_line: dict | None, key_path) -> bool:
    """Whether `snakemake --config` set the value at key_path (or a mapping around it)."""
    node = command_line
    for part in map(str, key_path):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return node is not None


def describe(error, source: str, command_line: dict | None = None) -> str:
    """One sentence per schema violation: where, what was found, what is allowed, and which
    file (or the command line) it came from."""
    where = _key_path(error)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        if any(set_on_command_line(command_line, (*error.absolute_path, key)) for key in unknown):
            source = COMMAND_LINE
        explained = [FOREIGN_KEYS[(*map(str, error.absolute_path), key)] for key in unknown
                     if (*map(str, error.absolute_path), key) in FOREIGN_KEYS]
        if explained:
            return f"{source}: " + "; ".join(explained) + "."
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        prefix = f"{where}." if where != "(top level)" else ""
        return (f"{source}: unknown key {', '.join(prefix + h for h in hints)}. "
                f"Allowed keys{' under ' + where if prefix else ''}: {', '.join(known)}.")
    if set_on_command_line(command_line, error.absolute_path):
        source = COMMAND_LINE
    if error.validator == "required":
        return f"{source}: {where} lacks a required key: {error.message}."
    if error.validator in ("minItems", "uniqueItems"):
        return f"{source}: {where} = {error.instance!r}: {error.message}."
    return (f"{source}: {where} = {error.instance!r} is not allowed; it must be "
            f"{_allowed(error.schema)}.")


def validate(config: dict, source: str = "params.yaml", command_line: dict | None = None) -> None:
    """Raise ConfigError listing every problem, each with key, bad value, what is allowed and
    where it was set (`command_line`: the `--config` overrides merged into config last)."""
    validator = Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [describe(error, source, command_line) for error in errors]
    if command_line:
        source = f"{source} + --config"
    if not problems:
        problems = semantic_problems(config, source)
    if problems:
        raise ConfigError(" ".join(problems) + " Fix the value(s) and rerun; the schema with "
                          "every key documented is pipeline/params.schema.yaml.")


def semantic_problems(config: dict, source: str) -> list[str]:
    """Checks that need more than one key."""
    study = config["study"]
    problems = []
    classes = DATASETS[study["dataset"]].num_classes
    for n_labels in study["n_labels"]:
        if classes and n_labels % classes:
            problems.append(f"{source}: study.n_labels contains {n_labels}, which is not a multiple "
                            f"of the {classes} classes of {study['dataset']}; use e.g. "
                            f"{max(classes, n_labels // classes * classes)}.")
    for name in study["algorithms"]:
        if name not in config["algorithms"]:
            problems.append(f"{source}: study.algorithms lists {name!r}, which has no entry under "
                            f"`algorithms:` for its hyperparameters; add `algorithms: {{{name}: {{}}}}`.")
    missing = [f"{section}.{name}" for section, name in (("datasets", study["dataset"]),
                                                          ("models", study["model"]))
               if name not in config[section]]
    if missing:
        problems.append(f"{source}: {' and '.join(missing)} is missing: every option of the "
                        f"study's dataset and model must be given (params.yaml lists them all).")
    elif study["dataset"] == "image_folder" and config["datasets"]["image_folder"]["path"] is None:
        problems.append(f"{source}: study.dataset is image_folder but datasets.image_folder.path "
                        f"is null; set it to a folder with one sub-folder of images per class.")
    train = config["train"]
    for key in ("eval_every", "log_every"):
        if train[key] > train["steps"]:
            problems.append(f"{source}: train.{key} = {train[key]} is larger than train.steps = "
                            f"{train['steps']}; make it at most {train['steps']}.")
    dash = config["algorithms"].get("dash", {})
    if ("dash" in study["algorithms"] and dash.get("variant") == "usb"
            and dash["warmup_steps"] < train["steps"] and train["eval_every"] > dash["warmup_steps"]):
        problems.append(f"{source}: algorithms.dash.warmup_steps = {dash['warmup_steps']} is "
                        f"smaller than train.eval_every = {train['eval_every']}: no evaluation "
                        f"comes by the end of warm-up, which Dash (usb) takes rho_hat from; make "
                        f"train.eval_every divide warmup_steps (or lengthen the warm-up).")
    if train["portable_numerics"] and train["precision"] != "fp32":
        problems.append(f"{source}: train.portable_numerics is true but train.precision is "
                        f"{train['precision']!r}; portable numerics need fp32, so set "
                        f"train.precision to 'fp32' or portable_numerics to false.")
    if train["portable_numerics"] and train["device"] != "cpu":
        problems.append(f"{source}: train.portable_numerics is true but train.device is "
                        f"{train['device']!r}; portable numerics pin CPU code paths only, so set "
                        f"train.device to 'cpu' or portable_numerics to false.")
    return problems


def enum_of(*keys: str) -> list[str]:
    """The allowed values the schema lists at a key path (for registry consistency tests)."""
    node = load_schema()
    for key in keys:
        node = node["properties"][key]
    return node.get("items", node)["enum"]


def canonical_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's numbers, every default filled in (the resolved
    configuration): what is hashed, logged to MLflow and written to metrics.json. Execution
    settings (EXECUTION_KEYS) are not in it. It travels to the train job as JSON (--run-config).
    Its mappings are its own copies: nothing else changes them."""

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
    config_hash: str   # canonical_hash of the other fields

    def as_dict(self) -> dict:
        """The fields in their order: the `run` of metrics.json, and what config_hash hashes
        (without config_hash itself)."""
        return asdict(self)

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
        missing = [name for name in names if name not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            problems = ([f"it lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                       ([f"{', '.join(map(repr, unknown))} is not a key of it"] if unknown else [])
            raise ConfigError(f"{source}: the run config is not one the workflow writes: "
                              f"{'; '.join(problems)}. Its keys are {', '.join(names)}; pass "
                              f"what RunConfig.to_json writes (the Snakefile's train rule does)")
        return cls(**data)

    def components(self) -> dict[str, str]:
        """The registered components the run uses, by kind: what its training code digest is
        narrowed to (pipeline/code.py)."""
        return {"algorithm": self.algorithm, "dataset": self.dataset, "model": self.model}


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

    def run_config(self, dataset: str, n_labels: int | str, algorithm: str,
                   seed: int | str) -> RunConfig:
        """The resolved configuration of one run (RunConfig), made once per run."""
        key = (dataset, int(n_labels), algorithm, int(seed))
        if key not in self.runs:
            self.runs[key] = self.resolve_run(*key)
        return self.runs[key]

    def resolve_run(self, dataset: str, n_labels: int, algorithm: str, seed: int) -> RunConfig:
        """A new RunConfig: the study's settings of this run (the algorithm's overrides of
        `train` applied, the dataset's flip filled in) and their hash."""
        train = resolved_train({**self.config["train"],
                                **self.config["algorithm_overrides"].get(algorithm, {})}, dataset)
        model = self.config["study"]["model"]
        run = copy.deepcopy({   # the order of RunConfig's fields
            "study": self.name, "dataset": dataset,
            "dataset_options": self.dataset_options(dataset),
            "n_labels": n_labels, "seed": seed,
            "algorithm": algorithm, "algorithm_params": self.config["algorithms"][algorithm],
            "model": model, "model_options": self.config["models"][model],
            "train": train,
        })
        return RunConfig(**run, config_hash=canonical_hash(run))

    def execution(self) -> dict:
        """Where training jobs run (device, threads): given to each job on its command line."""
        return {key: self.config["train"][key] for key in EXECUTION_KEYS}


def resolved_train(train: dict, dataset: str) -> dict:
    """A run's training settings: the execution settings left out, the dataset's own flip
    (semisup.catalog) filled in unless the config sets one."""
    resolved = {key: value for key, value in train.items() if key not in EXECUTION_KEYS}
    resolved.setdefault("horizontal_flip", DATASETS[dataset].horizontal_flip)
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
