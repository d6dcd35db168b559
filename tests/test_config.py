"""params.yaml validation: every bad key or value stops the run with a message naming the key,
the bad value and what is allowed."""
import copy

import pytest

from pipeline.config import ConfigError, NUM_CLASSES, ROOT, enum_of, load_params, load_study, validate


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


def test_config_hash_ignores_threads_but_not_hyperparameters(params):
    base = load_study(params).run_config("digits", 20, "fixmatch", 0)["config_hash"]
    more_threads = copy.deepcopy(params)
    more_threads["train"]["threads"] = 4
    other_tau = copy.deepcopy(params)
    other_tau["algorithms"]["fixmatch"]["tau"] = 0.9
    assert load_study(more_threads).run_config("digits", 20, "fixmatch", 0)["config_hash"] == base
    assert load_study(other_tau).run_config("digits", 20, "fixmatch", 0)["config_hash"] != base


def test_schema_enums_match_the_registries():
    from semisup.algorithms import ALGORITHMS
    from semisup.data import DATASETS
    from semisup.models import MODELS

    assert sorted(enum_of("study", "algorithms")) == sorted(ALGORITHMS)
    assert sorted(enum_of("study", "dataset")) == sorted(DATASETS)
    assert sorted(enum_of("study", "model")) == sorted(MODELS)
    for name, classes in NUM_CLASSES.items():
        assert DATASETS[name].num_classes == classes
