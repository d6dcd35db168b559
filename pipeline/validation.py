"""Check a study's parameters: against the schema (pipeline/params.schema.yaml, every key
documented there) and across keys. Each problem is one sentence naming the key, the bad value, what
is allowed and where it was set (the file, or the command line's --config).

Kept free of torch so that the Snakefile can validate in a fraction of a second. The networks'
and datasets' names are listed in the schema (enums); the algorithms' names, their hyperparameter
blocks and the reference keys they refuse come from their cards (semisup.catalog); tests check
that all of them match the code's registries.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from semisup.catalog import AUDIO_MODELS, DATASETS, TEXT_MODELS, algorithm_cards

from .errors import ConfigError
from .variants import row_labels, variants_of

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")



def foreign_keys() -> dict[tuple[str, ...], str]:
    """Keys the references use that mean something else here (each algorithm's card names
    them): the schema rejects them, with this why."""
    return {("algorithms", name, key): why for name, card in algorithm_cards().items()
            for key, why in card.foreign_keys.items()}


def _integer(checker, instance) -> bool:
    """An integer is an int: JSON Schema would also take 16.0, which torch then refuses."""
    return isinstance(instance, int) and not isinstance(instance, bool)


# The schema's validator, with integers that are ints.
Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer))


# Settings of where and how the job's process runs: the same for every row of a study, so a
# variant's `train` cannot set them.
PROCESS_KEYS = ("device", "threads", "portable_numerics")


def load_schema(variant_names: tuple[str, ...] = ()) -> dict:
    """params.schema.yaml, with the algorithms' names and hyperparameter blocks from their cards;
    study.algorithms may also list `variant_names` (the config's variants)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    cards = algorithm_cards()
    properties = schema["properties"]
    properties["study"]["properties"]["algorithms"]["items"] = {
        "enum": [*cards, *(name for name in variant_names if name not in cards)]}
    properties["algorithms"]["properties"] = {
        name: {"description": card.description, "type": "object", "additionalProperties": False,
               "required": list(card.hyperparameters), "properties": card.hyperparameters}
        for name, card in cards.items()}
    variant = properties["variants"]["additionalProperties"]["properties"]
    variant["algorithm"] = {"description": variant["algorithm"]["description"],
                            "enum": list(cards)}
    # merged key by key onto the study's `train`: no key is required, at any depth
    variant["train"] = {**variant["train"], "additionalProperties": False, "properties": {
        key: without_required(value) for key, value in properties["train"]["properties"].items()
        if key not in PROCESS_KEYS}}
    variant["train"].pop("x-properties-from")
    return schema


def without_required(schema):
    """A schema (part) with no `required` keys, at any depth: for settings merged onto complete
    ones."""
    if isinstance(schema, dict):
        return {key: without_required(value) for key, value in schema.items() if key != "required"}
    if isinstance(schema, list):
        return [without_required(value) for value in schema]
    return schema


def variant_names(config: dict) -> tuple[str, ...]:
    """The names of the config's variants, where `variants` is a mapping (else the schema says
    what is wrong with it)."""
    variants = config.get("variants")
    return tuple(name for name in variants if isinstance(name, str)) \
        if isinstance(variants, dict) else ()


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
        foreign = foreign_keys()
        explained = [foreign[(*map(str, error.absolute_path), key)] for key in unknown
                     if (*map(str, error.absolute_path), key) in foreign]
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
    if "propertyNames" in error.schema_path:   # a key of a mapping, not a value
        return (f"{source}: {where} has the key {error.instance!r}, which is not allowed; its "
                f"keys must be {_allowed(error.schema)}.")
    if error.validator == "required":
        return f"{source}: {where} lacks a required key: {error.message}."
    if error.validator in ("minItems", "uniqueItems"):
        return f"{source}: {where} = {error.instance!r}: {error.message}."
    close = (difflib.get_close_matches(error.instance, [str(v) for v in error.schema["enum"]], n=1)
             if error.validator == "enum" and isinstance(error.instance, str) else [])
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{source}: {where} = {error.instance!r} is not allowed{hint}; it must be "
            f"{_allowed(error.schema)}.")


def validate(config: dict, source: str = "params.yaml", command_line: dict | None = None) -> None:
    """Raise ConfigError listing every problem, each with key, bad value, what is allowed and
    where it was set (`command_line`: the `--config` overrides merged into config last)."""
    validator = Validator(load_schema(variant_names(config)))
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
    return [*variant_problems(config, source), *study_problems(config, source),
            *steps_problems(config["train"], source), *numerics_problems(config["train"], source),
            *augment_problems(config["train"], source), *selection_problems(config, source),
            *label_problems(config, source)]


def variant_problems(config: dict, source: str) -> list[str]:
    """Each variant: a name of its own, an algorithm with hyperparameters, and its
    algorithm_params checked as the algorithm's block is (the merged block against its card)."""
    problems = []
    cards = algorithm_cards()
    blocks = load_schema()["properties"]["algorithms"]["properties"]
    for name, variant in variants_of(config).items():
        algorithm = variant["algorithm"]
        if name in cards:
            problems.append(f"{source}: variants.{name}: {name!r} is a registered algorithm's "
                            f"name, and a variant needs a row name of its own; rename it, e.g. "
                            f"{algorithm}_{'cta' if name == algorithm else 'variant'}.")
        if algorithm not in config["algorithms"]:
            problems.append(f"{source}: variants.{name}.algorithm is {algorithm!r}, which has "
                            f"no entry under `algorithms:` for its hyperparameters; add "
                            f"`algorithms: {{{algorithm}: {{...}}}}` (params.yaml has them all).")
            continue
        merged = {**config["algorithms"][algorithm], **variant.get("algorithm_params", {})}
        for error in Validator(blocks[algorithm]).iter_errors(merged):
            error.path.extendleft(reversed(["variants", name, "algorithm_params"]))
            problems.append(describe(error, source))
    return problems


def label_problems(config: dict, source: str) -> list[str]:
    """reports.labels names rows of registered algorithms the study has, and no two rows of a
    study share a name in the reports (the tables could not tell them apart)."""
    rows = config["study"]["algorithms"]
    variants = variants_of(config)
    problems = []
    for row in (config["reports"].get("labels") or {}):
        if row in variants:
            problems.append(f"{source}: reports.labels names the variant {row!r}; a variant's "
                            f"row is named by its own label: set variants.{row}.label instead.")
        elif row not in rows:
            problems.append(f"{source}: reports.labels names {row!r}, which is not in "
                            f"study.algorithms ({', '.join(rows)}); remove it or correct it.")
    named: dict[str, list[str]] = {}
    for row, label in row_labels(config).items():
        named.setdefault(label, []).append(row)
    problems += [f"{source}: the rows {' and '.join(map(repr, same))} of study.algorithms would "
                 f"both be named {label!r} in the reports; give each its own label "
                 f"(variants.<name>.label, or reports.labels for a registered algorithm)."
                 for label, same in named.items() if len(same) > 1]
    return problems


def selection_problems(config: dict, source: str) -> list[str]:
    """Only text datasets (USB's releases) have the validation split that reports.selection
    at_best_validation reads."""
    dataset = config["study"]["dataset"]
    if config["reports"]["selection"] != "at_best_validation" or \
            DATASETS[dataset].inputs.modality == "text":
        return []
    return [f"{source}: reports.selection is at_best_validation, but {dataset} has no validation "
            f"split (USB's text datasets do); use best, last, median or mean."]


def release_problems(config: dict, source: str, n_labels: int, release) -> list[str]:
    """A labeled set fixed by the dataset's release (Semi-Aves) has one size per choice of it."""
    dataset = config["study"]["dataset"]
    value = config.get("datasets", {}).get(dataset, {}).get(release.option)
    count = release.count(value)
    if count is None or n_labels == count:
        return []   # an unknown choice is the dataset's own error, with what is allowed
    choices = ", ".join(f"{choice}: {size}" for choice, size in release.counts)
    return [f"{source}: study.n_labels contains {n_labels}, but the labeled set of {dataset} is "
            f"fixed by its release: datasets.{dataset}.{release.option} {value} has {count} "
            f"labeled images ({choices}); use n_labels [{count}]."]


def study_problems(config: dict, source: str) -> list[str]:
    """The study's label budgets, algorithms, dataset and network against their settings."""
    study = config["study"]
    problems = []
    classes = DATASETS[study["dataset"]].num_classes
    release = DATASETS[study["dataset"]].release_labels
    for n_labels in study["n_labels"]:
        if release is not None:
            problems += release_problems(config, source, n_labels, release)
        elif classes and n_labels % classes:
            problems.append(f"{source}: study.n_labels contains {n_labels}, which is not a multiple "
                            f"of the {classes} classes of {study['dataset']}; use e.g. "
                            f"{max(classes, n_labels // classes * classes)}.")
    for name in study["algorithms"]:
        if name not in variants_of(config) and name not in config["algorithms"]:
            problems.append(f"{source}: study.algorithms lists {name!r}, which has no entry under "
                            f"`algorithms:` for its hyperparameters; add `algorithms: {{{name}: {{}}}}`.")
    missing = [f"{section}.{name}" for section, name in (("datasets", study["dataset"]),
                                                          ("models", study["model"]))
               if name not in config[section]]
    if missing:
        problems.append(f"{source}: {' and '.join(missing)} is missing: every option of the "
                        f"study's dataset and model must be given (params.yaml lists them all).")
    elif study["dataset"] in ("image_folder", "audio_folder") and \
            config["datasets"][study["dataset"]]["path"] is None:
        kind = "images" if study["dataset"] == "image_folder" else "WAV files"
        problems.append(f"{source}: study.dataset is {study['dataset']} but datasets."
                        f"{study['dataset']}.path is null; set it to a folder with one sub-folder "
                        f"of {kind} per class.")
    return problems + modality_problems(study, source)


def modality_problems(study: dict, source: str) -> list[str]:
    """An audio dataset needs a network that takes waveforms, a text dataset one that reads token
    ids (with its own tokenizer), an image dataset one that does neither."""
    modality = DATASETS[study["dataset"]].inputs.modality
    audio = modality == "audio"
    if audio != (study["model"] in AUDIO_MODELS):
        if audio:
            return [f"{source}: study.dataset {study['dataset']} is audio but study.model "
                    f"{study['model']} does not take waveforms; set study.model to one of "
                    f"{', '.join(AUDIO_MODELS)}."]
        return [f"{source}: study.model {study['model']} takes waveforms but study.dataset "
                f"{study['dataset']} is not audio; choose a network for its inputs."]
    if (modality == "text") != (study["model"] in TEXT_MODELS):
        kind, fit = (("a text", ", ".join(TEXT_MODELS)) if modality == "text"
                     else (f"an {modality}", "a network for its inputs"))
        return [f"{source}: study.dataset {study['dataset']} is {kind} dataset but study.model "
                f"{study['model']} is not a network for it; use {fit}."]
    return []


def steps_problems(train: dict, source: str) -> list[str]:
    return [f"{source}: train.{key} = {train[key]} is larger than train.steps = "
            f"{train['steps']}; make it at most {train['steps']}."
            for key in ("eval_every", "log_every") if train[key] > train["steps"]]


def numerics_problems(train: dict, source: str) -> list[str]:
    problems = []
    if train["portable_numerics"] and train["precision"] != "fp32":
        problems.append(f"{source}: train.portable_numerics is true but train.precision is "
                        f"{train['precision']!r}; portable numerics need fp32, so set "
                        f"train.precision to 'fp32' or portable_numerics to false.")
    if train["portable_numerics"] and train["device"] != "cpu":
        problems.append(f"{source}: train.portable_numerics is true but train.device is "
                        f"{train['device']!r}; portable numerics pin CPU code paths only, so set "
                        f"train.device to 'cpu' or portable_numerics to false.")
    return problems


def augment_problems(train: dict, source: str) -> list[str]:
    """RandAugment's op list and the strong crop are RandAugment's (CTAugment draws its own ops
    after the weak view); the resized crop's ranges are (low, high)."""
    problems = []
    if train["strong_augment"] == "ctaugment":
        for key, value in (("rand_augment_ops", "all"), ("strong_crop", "pad_crop")):
            if train[key] != value:
                problems.append(f"{source}: train.{key} is {train[key]!r} but train."
                                f"strong_augment is 'ctaugment', which draws its own ops after "
                                f"the weak view; set train.{key} to {value!r} or strong_augment "
                                f"to 'fixmatch' or 'usb'.")
    for key in ("resized_crop_scale", "resized_crop_ratio"):
        low, high = train[key]
        if low > high:
            problems.append(f"{source}: train.{key} = {train[key]} is not a range (low, high); "
                            f"write it as [{high}, {low}].")
    return problems


def enum_of(*keys: str) -> list[str]:
    """The allowed values the schema lists at a key path (for registry consistency tests)."""
    node = load_schema()
    for key in keys:
        node = node["properties"][key]
    return node.get("items", node)["enum"]
