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
DASH_COMPARISON = {"supervised", "pimodel", "pseudolabel", "meanteacher", "mixmatch", "uda",
                   "remixmatch", "fixmatch", "fixmatch_cta", "flexmatch", "dash", "dash_cta"}
# The Dash paper's rows of FixMatch and Dash: each with RandAugment and with CTAugment.
DASH_ROWS = {"fixmatch": ("FixMatch (RA)", "fixmatch"), "fixmatch_cta": ("FixMatch (CTA)", "ctaugment"),
             "dash": ("Dash (RA)", "fixmatch"), "dash_cta": ("Dash (CTA)", "ctaugment")}
USB_CLASSIC = {
    # config: (dataset, label budgets, network, weight decay)
    "usb-classic-cifar10": ("cifar10", [40, 250, 4000], "wrn_28_2", 5e-4),
    "usb-classic-cifar100": ("cifar100", [400, 2500, 10000], "wrn_28_2", 1e-3),
    "usb-classic-svhn": ("svhn", [40, 250, 1000], "wrn_28_2", 5e-4),
    "usb-classic-stl10": ("stl10", [40, 250, 1000], "wrn_37_2", 5e-4),
}
USB_MU_1 = {"pseudolabel", "meanteacher", "pimodel", "vat", "mixmatch", "remixmatch"}


def study_of(name: str):
    path = CONFIGS / f"{name}.yaml"
    return load_study(load_params(ROOT / "params.yaml", path), source=str(path))


USB_CV = {
    # config: (dataset, label budgets, network, lr, layer decay, pad_fraction, FlexMatch's warm-up)
    "usb-cv-cifar100": ("cifar100", [200, 400], "vit_small_patch2_32", 5e-4, 0.5, 0.125, 0),
    "usb-cv-stl10": ("stl10", [40, 100], "vit_base_patch16_96", 1e-4, 0.65, 0.125, 5120),
    "usb-cv-eurosat": ("eurosat", [20, 40], "vit_small_patch2_32", 5e-5, 1.0, 0.125, 0),
    "usb-cv-tissuemnist": ("tissuemnist", [80, 400], "vit_tiny_patch2_32", 5e-5, 0.95, 1 / 32, 0),
    "usb-cv-semi-aves": ("semi_aves", [3959], "vit_small_patch16_224", 1e-3, 0.65, 0.0, 0),
}
# semilearn 0.3.2's cv_datasets/*.py transforms where they are not CIFAR-100's: (vertical_flip,
# rand_augment_ops, dataset image_size, crop_size, strong_crop)
USB_CV_AUGMENT = {
    "usb-cv-cifar100": (False, "all", None, None, "pad_crop"),
    "usb-cv-stl10": (False, "all", None, None, "pad_crop"),
    "usb-cv-eurosat": (True, "all", 32, None, "pad_crop"),
    "usb-cv-tissuemnist": (True, "no_color", 32, None, "pad_crop"),
    "usb-cv-semi-aves": (False, "all", 256, 224, "resized_crop"),
}
USB_CV_EMA = {"meanteacher", "comatch", "simmatch"}   # ema_m 0.999; the others 0


@pytest.mark.parametrize("name", sorted(path.stem for path in CONFIGS.glob("*.yaml")))
def test_every_config_is_a_valid_study(name):
    study_of(name)


@pytest.mark.parametrize("name", [*sorted(DASH_STUDIES), *sorted(USB_CLASSIC), *sorted(USB_CV),
                                  "gpu-smoke", "usb-cv-smoke"])
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
    assert all(config["algorithm_overrides"][name]["uratio"] == 1
               for name in ("pseudolabel", "pimodel", "mixmatch", "remixmatch"))
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
                       "published": "reference/published_results.csv", "overwrite": False,
                       "labels": {"fixmatch": "FixMatch (RA)", "dash": "Dash (RA)"}}
    assert (ROOT / reports["published"]).is_file()


@pytest.mark.parametrize("name", sorted(DASH_STUDIES))
def test_dash_study_has_fixmatch_and_dash_with_randaugment_and_with_ctaugment(name):
    """The paper's FixMatch (RA), FixMatch (CTA), Dash (RA), Dash (CTA): the CTA rows are
    variants whose runs differ from the RA rows' in their strong augmentation alone."""
    study = study_of(name)
    dataset, budgets = DASH_STUDIES[name][:2]
    labels = study.row_labels()
    for row, (label, augmentation) in DASH_ROWS.items():
        run = study.run_config(dataset, budgets[0], row, 0)
        assert (labels[row], run.train["strong_augment"]) == (label, augmentation)
        plain = study.run_config(dataset, budgets[0], run.algorithm, 0)
        assert {**run.train, "strong_augment": "fixmatch"} == plain.train
        assert run.algorithm_params == plain.algorithm_params


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


@pytest.mark.parametrize("name", sorted(USB_CLASSIC))
def test_usb_classic_study_runs_all_19_algorithms_with_usbs_protocol(name):
    from semisup.catalog import algorithm_cards

    study = study_of(name)
    config, dataset, budgets, model, weight_decay = study.config, *USB_CLASSIC[name]
    assert sorted(config["study"]["algorithms"]) == sorted(algorithm_cards())
    assert len(config["study"]["algorithms"]) == 19
    assert (config["study"]["dataset"], config["study"]["n_labels"], config["study"]["model"],
            config["study"]["seeds"]) == (dataset, budgets, model, [0, 1, 2])
    assert config["models"][model] == {"variant": "semilearn"}
    train = config["train"]
    assert (train["steps"], train["batch_size"], train["uratio"], train["lr"]) == (2 ** 20, 64, 7, 0.03)
    assert (train["weight_decay"], train["ema_decay"], train["eval_every"]) == (weight_decay, 0.999,
                                                                               5120)
    assert train["strong_augment"] == "usb"
    assert {key for key, value in config["algorithm_overrides"].items()
            if value.get("uratio") == 1} == USB_MU_1
    # what USB's runs do where we differ by a named parameter
    assert config["algorithms"]["uda"]["tsa_rule"] == "max_probability"
    assert config["algorithms"]["meanteacher"]["batchnorm"] == "separate"
    assert config["algorithms"]["dash"]["variant"] == "usb"
    assert {key: config["reports"][key] for key in ("dir", "selection", "model", "published")} == {
        "dir": None, "selection": "best", "model": "ema", "published": "reference/published_results.csv"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USB_CLASSIC))
def test_usb_classic_study_dry_runs_offline_every_algorithm_budget_and_seed(name, tmp_path):
    """`snakemake -n` plans 3 budgets x 19 algorithms x 3 seeds = 171 training runs, offline (the
    download is planned, not made)."""
    import re
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                             str(ROOT / "Snakefile"), "--configfile", str(CONFIGS / f"{name}.yaml"),
                             "--cores", "2", "--dry-run", "--quiet", "rules"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    assert counts["train"] == "171" and counts["evaluate"] == "57"


@pytest.mark.parametrize("name", sorted(USB_CV))
def test_usb_cv_study_runs_all_19_algorithms_with_usbs_pretrained_protocol(name):
    """semilearn 0.3.2's config/usb_cv files, value by value (configs/usb-cv-*.yaml say where)."""
    from semisup.catalog import algorithm_cards

    study = study_of(name)
    config = study.config
    dataset, budgets, model, lr, layer_decay, pad_fraction, flexmatch_warmup = USB_CV[name]
    assert sorted(config["study"]["algorithms"]) == sorted(algorithm_cards())
    assert (config["study"]["dataset"], config["study"]["n_labels"], config["study"]["model"],
            config["study"]["seeds"]) == (dataset, budgets, model, [0, 1, 2])
    weights = config["models"][model]
    assert weights["pretrained"] and weights["checkpoint"].startswith(
        "https://github.com/microsoft/Semi-supervised-learning/releases/download/v.0.0.0/")
    train = config["train"]
    assert (train["steps"], train["batch_size"], train["uratio"]) == (204_800, 8, 1)
    assert (train["optimizer"], train["lr"], train["layer_decay"], train["weight_decay"]) == (
        "adamw", lr, layer_decay, 5e-4)
    assert (train["lr_schedule"], train["eval_every"], train["pad_fraction"]) == ("cosine", 2048,
                                                                               pad_fraction)
    assert train["strong_augment"] == "usb" and train["precision"] == "bf16"
    for algorithm in config["study"]["algorithms"]:
        run = study.run_config(dataset, budgets[0], algorithm, 0).train
        assert run["ema_decay"] == (0.999 if algorithm in USB_CV_EMA else 0.0), algorithm
        assert run["lr_warmup_steps"] == (flexmatch_warmup if algorithm == "flexmatch" else 5120)
        assert run["uratio"] == 1
    algorithms = config["algorithms"]
    assert algorithms["mixmatch"]["lambda_u"] == 10.0
    assert (algorithms["comatch"]["queue_batches"], algorithms["comatch"]["lambda_contrast"]) == (
        32, 5.0 if dataset == "stl10" else 1.0)
    assert algorithms["simmatch"]["T"] == (0.1 if dataset in ("cifar100", "stl10") else 0.2)
    assert config["reports"]["selection"] == "best" and config["reports"]["model"] == "ema"
    assert config["reports"]["published"] == "reference/published_usb_cv.csv"


@pytest.mark.parametrize("name", sorted(USB_CV_AUGMENT))
def test_usb_cv_study_augments_as_semilearns_dataset_transforms(name):
    """eurosat.py and medmnist.py flip vertically too, medmnist.py's RandAugment has no colour
    ops, aves.py crops 224 of 256 px images (no padding) and resizes a random crop for the
    strong view (timm's default ranges); every run of the study gets them."""
    vertical_flip, ops, image_size, crop_size, strong_crop = USB_CV_AUGMENT[name]
    study = study_of(name)
    dataset = study.dataset
    for algorithm in study.config["study"]["algorithms"]:
        run = study.run_config(dataset, study.config["study"]["n_labels"][0], algorithm, 0)
        assert (run.train["vertical_flip"], run.train["rand_augment_ops"], run.train["crop_size"],
                run.train["strong_crop"]) == (vertical_flip, ops, crop_size, strong_crop)
        assert run.train["horizontal_flip"] is True
        assert (run.train["resized_crop_scale"], run.train["resized_crop_ratio"]) == (
            [0.08, 1.0], [0.75, 4 / 3])
    if image_size is not None:
        assert study.dataset_options(dataset)["image_size"] == image_size


def test_usb_cv_published_numbers_are_every_cell_of_usbs_results_file():
    """reference/published_usb_cv.csv: USB's results/usb_cv.csv, 19 algorithms x 9 columns less
    its one `None` (CRMatch, STL-10, 100 labels), read by the tables' own reader."""
    from pipeline.reports.tables import read_published

    rows = read_published(ROOT / "reference/published_usb_cv.csv")
    assert len(rows) == 170 and {row["selection"] for row in rows} == {"best"}
    cells = {(row["algorithm"], row["dataset"], row["n_labels"]): (row["error_mean"], row["error_std"])
             for row in rows}
    assert len(cells) == 170
    assert {(dataset, n) for _, dataset, n in cells} == {
        (dataset, n) for dataset, budgets, *_ in USB_CV.values() for n in budgets}
    assert cells["fixmatch", "cifar100", 200] == (29.6, 0.9)
    assert cells["defixmatch", "semi_aves", 3959] == (32.01, 0.26)
    assert ("crmatch", "stl10", 100) not in cells


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USB_CV))
def test_usb_cv_study_dry_runs_offline_every_algorithm_budget_and_seed(name, tmp_path):
    """`snakemake -n` plans budgets x 19 algorithms x 3 seeds training runs, offline (neither the
    download nor the pretrained weights are fetched by a dry run)."""
    import re
    import subprocess
    import sys

    budgets = len(USB_CV[name][1])
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                             str(ROOT / "Snakefile"), "--configfile", str(CONFIGS / f"{name}.yaml"),
                             "--cores", "2", "--dry-run", "--quiet", "rules"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    assert counts["train"] == str(budgets * 19 * 3) and counts["evaluate"] == str(budgets * 19)


def test_digits_all_runs_every_registered_algorithm_in_the_default_studys_shape():
    """configs/digits-all.yaml: all of the registry, otherwise the default study (budgets, seeds,
    network, steps, portable numerics), so that its numbers sit beside the default study's."""
    from semisup.algorithms import ALGORITHMS

    study, default = study_of("digits-all"), load_study(load_params(ROOT / "params.yaml"))
    assert study.name == "digits-all"
    algorithms = study.config["study"]["algorithms"]
    assert sorted(algorithms) == sorted(ALGORITHMS) and len(set(algorithms)) == len(algorithms)
    for key in ("dataset", "n_labels", "seeds", "model"):
        assert study.config["study"][key] == default.config["study"][key], key
    assert study.config["train"] == default.config["train"]
    assert set(default.config["study"]["algorithms"]) < set(algorithms)
