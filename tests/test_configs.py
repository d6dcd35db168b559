"""The ready studies in configs/: each merged on top of params.yaml is a valid study with the
paper's label budgets, networks and training protocol."""
import pytest

from pipeline.config import ROOT, load_params, load_study

CONFIGS = ROOT / "configs"
DASH_STUDIES = {
    # config: (dataset, label budgets, network, weight decay)
    "dash-cifar10": ("cifar10", [40, 250, 4000], "wrn_28_2", 5e-4),
    "dash-cifar100": ("cifar100", [400, 2500, 10000], "wrn_28_8", 1e-3),
    "dash-svhn": ("svhn", [40, 250, 1000], "wrn_28_2", 5e-4),
    "dash-stl10": ("stl10", [40, 250, 1000], "wrn_37_2", 5e-4),
}
DASH_COMPARISON = {"supervised", "pseudolabel", "meanteacher", "uda", "fixmatch", "flexmatch",
                   "dash"}


def study_of(name: str):
    path = CONFIGS / f"{name}.yaml"
    return load_study(load_params(ROOT / "params.yaml", path), source=str(path))


@pytest.mark.parametrize("name", sorted(path.stem for path in CONFIGS.glob("*.yaml")))
def test_every_config_is_a_valid_study(name):
    study_of(name)


@pytest.mark.parametrize("name", [*sorted(DASH_STUDIES), "gpu-smoke"])
def test_study_is_named_after_its_file(name):
    assert study_of(name).name == name


@pytest.mark.parametrize("name", sorted(DASH_STUDIES))
def test_dash_study_has_the_papers_budgets_network_and_three_seeds(name):
    dataset, budgets, model, weight_decay = DASH_STUDIES[name]
    study = study_of(name).config["study"]
    assert (study["dataset"], study["n_labels"], study["model"]) == (dataset, budgets, model)
    assert study["seeds"] == [0, 1, 2]
    assert set(study["algorithms"]) >= DASH_COMPARISON
    assert study_of(name).config["train"]["weight_decay"] == weight_decay


@pytest.mark.parametrize("name", sorted(DASH_STUDIES))
def test_dash_study_trains_with_the_published_protocol(name):
    config = study_of(name).config
    train = config["train"]
    assert train["steps"] == 2 ** 20
    assert (train["batch_size"], train["uratio"], train["lr"]) == (64, 7, 0.03)
    assert (train["momentum"], train["nesterov"], train["ema_decay"]) == (0.9, True, 0.999)
    assert (train["eval_every"], train["last_k"]) == (1024, 20)
    assert (train["precision"], train["channels_last"], train["device"]) == ("bf16", True, "auto")
    assert config["algorithm_overrides"]["pseudolabel"]["uratio"] == 1
    dash = config["algorithms"]["dash"]
    assert dash["variant"] == "official"
    assert (dash["steps_per_epoch"], dash["warmup_epochs"]) == (1024, 10)
    assert dash["warmup_steps"] == 2048
    assert (dash["gamma"], dash["rho_min"], dash["T"]) == (1.27, 0.05, 0.5)
    assert config["algorithms"]["fixmatch"]["tau"] == 0.95


@pytest.mark.parametrize("name", sorted(DASH_STUDIES))
def test_dash_study_reports_best_ema_error_beside_the_published_numbers(name):
    study = study_of(name)
    reports = study.config["reports"]
    assert study.reports_dir == f"reports/{name}"
    assert reports == {"dir": None, "selection": "best", "model": "ema",
                       "published": "reference/published_results.csv", "overwrite": False}
    assert (ROOT / reports["published"]).is_file()


def test_run_config_carries_the_network_options_into_the_config_hash():
    study = study_of("dash-cifar100")
    run = study.run_config("cifar100", 400, "dash", 0)
    # the Dash code runs on FixMatch-TF: its network
    assert run.model == "wrn_28_8" and run.model_options == {"variant": "fixmatch_tf"}
    assert run.algorithm_params["steps_per_epoch"] == 1024


def test_gpu_smoke_study_is_short_and_on_cuda():
    config = study_of("gpu-smoke").config
    # CIFAR-shaped and offline: the lent GPU machines have no internet
    assert config["study"]["dataset"] == "digits_rgb32" and config["study"]["model"] == "wrn_28_2"
    assert config["train"]["steps"] <= 1000 and config["train"]["device"] == "cuda"
    assert (config["train"]["precision"], config["train"]["channels_last"]) == ("bf16", True)
    assert study_of("gpu-smoke").reports_dir == "reports/gpu-smoke"
