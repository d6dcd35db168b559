"""params.yaml validation: every bad key or value stops the run with a message naming the key,
the bad value and what is allowed."""
import copy
import inspect
import json
import re
from dataclasses import replace

import pytest

from pipeline.config import (EXECUTION_KEYS, ROOT, RunConfig, canonical_hash,
                             command_line_overrides, deep_merge, load_params, load_study, run_hash,
                             setting_source)
from pipeline.errors import ConfigError
from pipeline.validation import enum_of, load_schema, validate
from pipeline.runs.checkpoints import checkpoint_dir


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def error_for(params, edit) -> str:
    config = copy.deepcopy(params)
    edit(config)
    with pytest.raises(ConfigError) as caught:
        validate(config)
    return str(caught.value)


def test_the_default_params_are_valid(params):
    study = load_study(params)
    assert study.name == params["study"]["name"]


def test_unknown_key_is_named_with_a_suggestion(params):
    message = error_for(params, lambda c: c["train"].update(stpes=5))
    assert "train.'stpes'" in message and "did you mean 'steps'" in message


def test_wrong_type_names_key_value_and_allowed(params):
    message = error_for(params, lambda c: c["train"].update(lr="fast"))
    assert "train.lr = 'fast'" in message and "a number" in message


def test_zero_steps_is_rejected(params):
    message = error_for(params, lambda c: c["train"].update(steps=0))
    assert "train.steps = 0" in message and ">= 1" in message


def test_unknown_algorithm_lists_the_registered_ones(params):
    message = error_for(params, lambda c: c["study"].update(algorithms=["fixmatch", "fixmath"]))
    assert "'fixmath'" in message and "'fixmatch'" in message and "'supervised'" in message


def test_unknown_dataset_is_rejected(params):
    message = error_for(params, lambda c: c["study"].update(dataset="mnist"))
    assert "study.dataset = 'mnist'" in message and "'cifar10'" in message


def test_n_labels_not_a_multiple_of_the_classes(params):
    message = error_for(params, lambda c: c["study"].update(n_labels=[25]))
    assert "25" in message and "multiple" in message


def test_algorithm_without_hyperparameters_entry(params):
    def edit(config):
        config["study"]["algorithms"] = ["fixmatch"]
        del config["algorithms"]["fixmatch"]
    assert "no entry under `algorithms:`" in error_for(params, edit)


def test_portable_numerics_need_the_cpu(params):
    message = error_for(params, lambda c: c["train"].update(portable_numerics=True, device="auto"))
    assert "train.portable_numerics" in message and "train.device" in message and "'cpu'" in message


def test_portable_numerics_need_fp32(params):
    message = error_for(params, lambda c: c["train"].update(portable_numerics=True, device="cpu",
                                                            precision="bf16"))
    assert "train.precision" in message and "'fp32'" in message


def test_config_hash_ignores_execution_settings_but_not_hyperparameters(params):
    base = load_study(params).run_config("digits", 20, "fixmatch", 0).config_hash
    elsewhere = copy.deepcopy(params)
    elsewhere["train"].update(threads=4, device="cpu")
    other_tau = copy.deepcopy(params)
    other_tau["algorithms"]["fixmatch"]["tau"] = 0.9
    assert load_study(elsewhere).run_config("digits", 20, "fixmatch", 0).config_hash == base
    assert load_study(other_tau).run_config("digits", 20, "fixmatch", 0).config_hash != base


def test_ctaugment_is_a_strong_augmentation_whose_settings_are_checked_and_hashed(params):
    """strong_augment: ctaugment is valid for any algorithm; train.ctaugment's settings matter to
    a run's hash only away from FixMatch-TF's values (HASH_NEUTRAL), and wrong ones are named."""
    base = load_study(params).run_config("digits", 20, "fixmatch", 0)
    cta = load_study(deep_merge(params, {"train": {"strong_augment": "ctaugment"}}))
    assert cta.run_config("digits", 20, "fixmatch", 0).config_hash != base.config_hash
    assert cta.run_config("digits", 20, "fixmatch", 0).train["ctaugment"] == params["train"]["ctaugment"]
    deeper = load_study(deep_merge(params, {"train": {"strong_augment": "ctaugment",
                                                      "ctaugment": {"depth": 3}}}))
    assert (deeper.run_config("digits", 20, "fixmatch", 0).config_hash
            != cta.run_config("digits", 20, "fixmatch", 0).config_hash)
    message = error_for(params, lambda c: c["train"]["ctaugment"].update(probe_network="student"))
    assert "train.ctaugment.probe_network" in message and "'ema'" in message and "'raw'" in message
    message = error_for(params, lambda c: c["train"].update(strong_augment="cta"))
    assert "train.strong_augment" in message and "'ctaugment'" in message


def test_run_config_is_fully_resolved_and_leaves_out_where_the_job_runs(params):
    config = copy.deepcopy(params)
    config["study"].update(dataset="svhn", n_labels=[40], model="wrn_28_2")
    run = load_study(config).run_config("svhn", 40, "uda", 1)
    assert run.dataset_options == {"mirror": None, "md5": {}, "extra": False}
    assert run.train["horizontal_flip"] is False               # SVHN's own convention
    assert run.model_options == {"variant": "semilearn"}
    assert run.algorithm_params == params["algorithms"]["uda"]
    assert not set(EXECUTION_KEYS) & set(run.train)
    config["train"]["horizontal_flip"] = True                   # an explicit choice wins
    assert load_study(config).run_config("svhn", 40, "uda", 1).train["horizontal_flip"] is True


def test_a_run_config_travels_as_json_and_hashes_its_other_fields(params):
    run = load_study(params).run_config("digits", 20, "fixmatch", 0)
    assert RunConfig.from_json(run.to_json()) == run
    assert list(run.as_dict()) == ["study", "dataset", "dataset_options", "n_labels", "seed",
                                   "algorithm", "algorithm_params", "model", "model_options",
                                   "train", "config_hash"]
    assert run.config_hash == run_hash(
        {key: value for key, value in run.as_dict().items() if key != "config_hash"})
    with_optimizer = replace(run, train={**run.train, "optimizer": "adamw"})
    assert run_hash({key: value for key, value in with_optimizer.as_dict().items()
                     if key != "config_hash"}) != run.config_hash


def test_a_run_config_without_a_key_names_it():
    run = load_study(load_params(ROOT / "params.yaml")).run_config("digits", 20, "fixmatch", 0)
    partial = {key: value for key, value in run.as_dict().items() if key not in ("seed", "train")}
    with pytest.raises(ConfigError, match=r"--run-config: .* lacks 'seed', 'train'"):
        RunConfig.from_json(json.dumps(partial))
    with pytest.raises(ConfigError, match=r"'steps' is not a key of it"):
        RunConfig.from_json(json.dumps({**run.as_dict(), "steps": 5}))
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{'seed': 0}")


def test_a_study_makes_each_run_config_once_and_names_its_checkpoint_folder(params):
    study = load_study(params)
    run = study.run_config("digits", 20, "fixmatch", 0)
    assert study.run_config("digits", "20", "fixmatch", "0") is run
    assert checkpoint_dir(run, "c" * 64) == (f"checkpoints/{study.name}/digits-20/fixmatch/seed0/"
                                             f"{run.config_hash[:16]}-{'c' * 12}")

def test_fixmatch_T_copied_from_usb_is_refused_with_the_reason(params):
    message = error_for(params, lambda c: c["algorithms"]["fixmatch"].update(T=0.5))
    assert "algorithms.fixmatch.T" in message and "unused with the hard labels" in message
    assert "change FixMatch's mask" in message


def test_image_folder_without_a_path_is_refused(params):
    message = error_for(params, lambda c: c["study"].update(dataset="image_folder"))
    assert "datasets.image_folder.path is null" in message


def test_schema_enums_match_the_registries_and_the_catalog():
    from semisup.algorithms import ALGORITHMS
    from semisup.catalog import DATASETS as CATALOG
    from semisup.data import DATASETS
    from semisup.models import MODELS

    assert sorted(enum_of("study", "algorithms")) == sorted(ALGORITHMS)
    assert sorted(enum_of("study", "dataset")) == sorted(DATASETS) == sorted(CATALOG)
    assert sorted(enum_of("study", "model")) == sorted(MODELS)


# ---- one source of defaults: params.yaml ------------------------------------------------------
def keyword_options(function) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def schema_section(*keys):
    node = load_schema()
    for key in keys:
        node = node["properties"][key]
    return node


def constructor_keywords(cls) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of a class's constructor and its base classes' (an algorithm
    passes the rest on to its base with **base)."""
    options = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            options.update(keyword_options(vars(klass)["__init__"]))
    return options


def test_every_hyperparameter_has_its_one_default_in_params_yaml(params):
    from semisup.algorithms import ALGORITHMS
    from semisup.algorithms.base import Algorithm

    base = set(keyword_options(Algorithm.__init__))
    for name, cls in ALGORITHMS.items():
        options = {k: p for k, p in constructor_keywords(cls).items() if k not in base}
        assert all(p.default is inspect.Parameter.empty for p in options.values()), name
        assert set(options) == set(params["algorithms"][name]), name
        section = schema_section("algorithms", name)   # the module's own `hyperparameters`
        assert set(section.get("required", [])) == set(section["properties"]) == set(options), name
        assert all(entry.get("description") for entry in section["properties"].values()), name


def test_the_catalog_reads_each_algorithm_as_its_module_registers_it():
    """The torch-free catalog (what the schema, the reports and the code digests use) agrees
    with the imported registry: names, modules, display names, figures, foreign keys."""
    from semisup.algorithms import ALGORITHMS
    from semisup.catalog import algorithm_cards

    cards = algorithm_cards()
    assert list(cards) == sorted(ALGORITHMS)
    for name, cls in ALGORITHMS.items():
        card = cards[name]
        assert (card.module, card.display_name, card.reference, card.figures, card.foreign_keys) == (
            cls.__module__, cls.display_name, cls.reference, cls.figures, cls.foreign_keys), name
        assert card.display_name and card.reference and card.description, name


def test_every_dataset_and_network_option_has_its_one_default_in_params_yaml(params):
    from semisup.data import DATASETS
    from semisup.models import MODELS

    for name, spec in DATASETS.items():
        options = keyword_options(spec.download)
        assert all(p.default is inspect.Parameter.empty for p in options.values()), name
        assert set(options) == set(params["datasets"][name]), name
        assert set(schema_section("datasets", name)["required"]) == set(options), name
    for name, constructor in MODELS.items():
        target = constructor.__init__ if inspect.isclass(constructor) else constructor
        options = keyword_options(target)
        assert all(p.default is inspect.Parameter.empty for p in options.values()), name
        assert set(options) == set(params["models"][name]), name


def test_the_training_loop_takes_every_setting_from_params_yaml(params):
    import dataclasses

    from semisup.data.image import ImageAugment
    from semisup.optim import OptimizerConfig
    from semisup.train import TrainConfig

    from pipeline.runs.train import AUGMENT_KEYS, LOOP_KEYS, OPTIMIZER_KEYS

    fields = lambda cls: {field.name: field for field in dataclasses.fields(cls)}
    for part in (TrainConfig, OptimizerConfig, ImageAugment):
        assert all(field.default is dataclasses.MISSING for field in fields(part).values()), part
    # Each library part takes its keys of params.yaml's train: the loop, the optimizer (its name
    # is train.optimizer), the image data layer's augmentation.
    assert set(fields(TrainConfig)) == set(LOOP_KEYS) | {"optimizer"}
    assert set(fields(OptimizerConfig)) == set(OPTIMIZER_KEYS) | {"name"}
    assert set(fields(ImageAugment)) == set(AUGMENT_KEYS.values())
    # ... and together every key but where the job runs and portable numerics (the process's).
    # (the flip is filled in per dataset, semisup.catalog, unless given)
    taken = set(LOOP_KEYS) | set(OPTIMIZER_KEYS) | {"optimizer"} | set(AUGMENT_KEYS)
    assert taken - {"horizontal_flip"} == (set(params["train"]) - set(EXECUTION_KEYS)
                                           - {"portable_numerics"})


def test_command_line_values_are_read_as_yaml():
    overrides = command_line_overrides(['train={"steps": 200, "nesterov": false}',
                                        "study={seeds: [0, 1]}", "reports={dir: out}"])
    assert overrides == {"train": {"steps": 200, "nesterov": False},
                         "study": {"seeds": [0, 1]}, "reports": {"dir": "out"}}
    with pytest.raises(ConfigError, match="must be key=value"):
        command_line_overrides(["train"])


def test_an_error_in_a_command_line_value_names_the_command_line(params):
    overrides = {"train": {"lr": "fast"}}
    with pytest.raises(ConfigError) as caught:
        validate(deep_merge(params, overrides), "params.yaml", command_line=overrides)
    assert str(caught.value).startswith("the command line (--config): train.lr = 'fast'")
    with pytest.raises(ConfigError, match=r"^params.yaml: train.lr = 'fast'"):
        validate(deep_merge(params, overrides), "params.yaml", command_line={"study": {}})


def test_the_source_of_a_setting_is_the_command_line_or_the_last_file_that_sets_it(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train: {device: cuda}\n")
    second.write_text("train: {steps: 5}\n")
    assert setting_source(("train", "device"), [first, second], None, tmp_path) == "a.yaml"
    assert setting_source(("train", "device"), [second], None, tmp_path) == "params.yaml"
    assert (setting_source(("train", "device"), [first], {"train": {"device": "cpu"}}, tmp_path)
            == "the command line (--config)")


@pytest.mark.parametrize("edit, message", [
    ({"train": {"batch_size": 16.0}}, "train.batch_size = 16.0 is not allowed; it must be an integer"),
    ({"study": {"name": ".."}}, "study.name = '..' is not allowed"),
    ({"reports": {"dir": ""}}, "reports.dir = '' is not allowed"),
    ({"reports": {"dir": "/tmp/x"}}, "reports.dir = '/tmp/x' is not allowed"),
    ({"reports": {"dir": "reports/../.."}}, "without '..'"),
])
def test_values_that_would_break_a_job_or_write_outside_the_project_are_refused(params, edit,
                                                                                  message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(deep_merge(params, edit))


def test_options_added_at_the_value_that_made_earlier_runs_keep_their_hashes(params):
    """The optimizer and schedule options, and Mean Teacher's BatchNorm batches, came after runs
    were recorded: at the values that make what those runs made (params.yaml's defaults), a
    run's hash is the one it had before them; another value is another run."""
    from pipeline.config import HASH_NEUTRAL

    run = load_study(params).run_config("digits", 10, "meanteacher", 0)   # has every one
    before = run.as_dict()
    before.pop("config_hash")
    for (section, key), value in HASH_NEUTRAL.items():
        assert before[section][key] == value, (section, key)
        del before[section][key]
    assert run.config_hash == canonical_hash(before)
    assert "optimizer" in run.train   # left out of the hash only, not out of the config
    for section, option, value in (("train", "optimizer", "adamw"), ("train", "lr_warmup_steps", 10),
                                   ("train", "layer_decay", 0.65),
                                   ("algorithms", "meanteacher", {"batchnorm": "separate"})):
        other = load_study(deep_merge(params, {section: {option: value}}))
        assert other.run_config("digits", 10, "meanteacher", 0).config_hash != run.config_hash, option


def test_a_key_given_twice_is_refused_naming_the_file_and_both_lines(tmp_path):
    """PyYAML (and Snakemake's --configfile) keep the last value silently; the workflow re-reads
    params.yaml and every --configfile with a loader that refuses it."""
    study = tmp_path / "study.yaml"
    study.write_text("study:\n  name: mine\ntrain:\n  steps: 20\n  lr: 0.1\n  steps: 30\n")
    with pytest.raises(ConfigError) as caught:
        load_params(ROOT / "params.yaml", study)
    message = str(caught.value)
    assert message.startswith(f"{study}: the key 'steps' is given twice in one mapping (lines 4 "
                              f"and 6)")
    assert "Keep one of them" in message
    with pytest.raises(ConfigError, match=r"--config 'train=.*': the key 'lr' is given twice"):
        command_line_overrides(['train={"lr": 0.1, "lr": 0.2}'])


def test_the_same_key_in_two_mappings_or_overriding_a_yaml_merge_is_not_a_duplicate(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("base: &base {steps: 20, lr: 0.1}\ntrain:\n  <<: *base\n  steps: 30\n"
                     "eval:\n  steps: 5\n")
    assert load_params(study)["train"] == {"steps": 30, "lr": 0.1}


def test_a_train_job_reads_its_run_config_from_the_file_the_workflow_wrote(params, tmp_path):
    run = load_study(params).run_config("digits", 10, "fixmatch", 0)
    path = tmp_path / "digits-10-fixmatch-seed0.json"
    path.write_text(json.dumps(run.as_dict(), indent=2))
    assert RunConfig.read(str(path)) == run
    assert RunConfig.read(run.to_json()) == run   # the JSON itself, for a run started by hand
    with pytest.raises(ConfigError, match=r"the run config file .*missing\.json is missing; "
                                          r"rerun snakemake, which writes"):
        RunConfig.read(str(tmp_path / "missing.json"))


# The default study's run hashes as they were before semilearn's per-dataset augmentation
# choices (train.vertical_flip, rand_augment_ops, crop_size, strong_crop, resized_crop_scale,
# resized_crop_ratio) existed, computed at commit 57c45c8: at their defaults they rename no run.
HASHES_BEFORE_USB_AUGMENTATION = {
    (10, "fixmatch", 0): "4e200e3b7278c4cd148e10f6b1bd9d67558d82a4c15627dda90fd7e9ac5365fe",
    (10, "supervised", 0): "50597c086105d97eec265179279e5c4f3920a554919ea4bc9535bf672fb68c14",
    (50, "meanteacher", 2): "5614e8e24cd174409a27a8cad4b63704bf94f8496fddccbdb80788ccb8bcf37d",
}
# The default study's settings at that commit, where they have changed since (session 8).
DEFAULTS_AT_57C45C8 = {"train": {"steps": 300, "eval_every": 30, "log_every": 15,
                                 "checkpoint_every": 150},
                       "algorithms": {"dash": {"warmup_steps": 60, "steps_per_epoch": 6}}}
USB_AUGMENTATION = {"vertical_flip": True, "rand_augment_ops": "no_color", "crop_size": 224,
                    "strong_crop": "resized_crop", "resized_crop_scale": [0.5, 1.0],
                    "resized_crop_ratio": [0.5, 2.0]}


@pytest.mark.parametrize("run", list(HASHES_BEFORE_USB_AUGMENTATION))
def test_the_augmentation_choices_at_their_defaults_keep_the_default_studys_hashes(params, run):
    n_labels, algorithm, seed = run
    resolved = load_study(deep_merge(params, DEFAULTS_AT_57C45C8)).run_config(
        "digits", n_labels, algorithm, seed)
    assert resolved.config_hash == HASHES_BEFORE_USB_AUGMENTATION[run]
    assert {key: resolved.train[key] for key in USB_AUGMENTATION} == {   # in the config, resolved
        "vertical_flip": False, "rand_augment_ops": "all", "crop_size": None,
        "strong_crop": "pad_crop", "resized_crop_scale": [0.08, 1.0],
        "resized_crop_ratio": [0.75, 4 / 3]}


@pytest.mark.parametrize("key", list(USB_AUGMENTATION))
def test_each_augmentation_choice_away_from_its_default_is_another_run(params, key):
    base = load_study(params).run_config("digits", 10, "fixmatch", 0).config_hash
    other = load_study(deep_merge(params, {"train": {key: USB_AUGMENTATION[key]}}))
    assert other.run_config("digits", 10, "fixmatch", 0).config_hash != base


def test_the_run_configs_augmentation_reaches_the_image_data_layer(params):
    from pipeline.runs.train import image_augment

    run = load_study(deep_merge(params, {"train": USB_AUGMENTATION})).run_config(
        "digits", 10, "fixmatch", 0)
    augment = image_augment(run.train)
    assert (augment.vertical_flip, augment.rand_augment_ops, augment.crop_size,
            augment.strong_crop) == (True, "no_color", 224, "resized_crop")
    assert augment.resized_crop_scale == (0.5, 1.0) and augment.resized_crop_ratio == (0.5, 2.0)


def test_augmentation_choices_that_ctaugment_cannot_honour_or_reversed_ranges_are_named(params):
    message = error_for(params, lambda c: c["train"].update(strong_augment="ctaugment",
                                                            rand_augment_ops="no_color"))
    assert "train.rand_augment_ops is 'no_color'" in message and "'all'" in message
    message = error_for(params, lambda c: c["train"].update(strong_augment="ctaugment",
                                                            strong_crop="resized_crop"))
    assert "train.strong_crop is 'resized_crop'" in message and "'pad_crop'" in message
    message = error_for(params, lambda c: c["train"].update(resized_crop_scale=[1.0, 0.08]))
    assert "train.resized_crop_scale = [1.0, 0.08] is not a range" in message
    message = error_for(params, lambda c: c["train"].update(rand_augment_ops="grey"))
    assert "train.rand_augment_ops" in message and "'no_color'" in message


@pytest.mark.parametrize("path", ["params.yaml", "pipeline/params.schema.yaml", "dvc.yaml",
                                  *sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml"))])
def test_no_project_yaml_file_gives_a_key_twice(path):
    """PyYAML keeps the last of two equal keys silently: the schema once held ema_decay twice."""
    from pipeline.config import read_yaml

    read_yaml((ROOT / path).read_text(), path)
