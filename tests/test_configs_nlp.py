"""USB's NLP studies (configs/usb-nlp-<task>.yaml): USB's budgets, 3 seeds and its NLP protocol
(semilearn 0.3.2's config/usb_nlp and scripts/config_generator_usb_nlp.py), every algorithm that
runs on text, USB's published numbers beside ours; `snakemake -n` plans every run offline."""
import re
import subprocess
import sys

import pytest

from pipeline.config import ROOT, load_params, load_study
from pipeline.reports.tables import read_published
from semisup.catalog import algorithm_cards

CONFIGS = ROOT / "configs"
# task: (label budgets, lr, layer decay), as USB's config generator sets them
USB_NLP = {
    "imdb": ([20, 100], 5e-5, 0.75),
    "ag_news": ([40, 200], 5e-5, 0.65),
    "amazon_review": ([250, 1000], 1e-5, 0.75),
    "yahoo_answers": ([500, 2000], 1e-4, 0.65),
    "yelp_review": ([250, 1000], 5e-5, 0.75),
}
NOT_ON_TEXT: set[str] = set()   # every algorithm (VAT: vat_embed; MixMatch, ReMixMatch: features)


def study_of(task: str):
    path = CONFIGS / f"usb-nlp-{task}.yaml"
    return load_study(load_params(ROOT / "params.yaml", path), source=str(path))


@pytest.mark.parametrize("task", sorted(USB_NLP))
def test_usb_nlp_study_has_usbs_budgets_seeds_and_every_algorithm_that_runs_on_text(task):
    study = study_of(task)
    config = study.config["study"]
    assert study.name == f"usb-nlp-{task}"
    assert (config["dataset"], config["n_labels"], config["seeds"], config["model"]) == (
        task, USB_NLP[task][0], [0, 1, 2], "bert_base_uncased")
    assert sorted(config["algorithms"]) == sorted(set(algorithm_cards()) - NOT_ON_TEXT)


@pytest.mark.parametrize("task", sorted(USB_NLP))
def test_usb_nlp_study_trains_with_usbs_nlp_protocol(task):
    config = study_of(task).config
    budgets, lr, layer_decay = USB_NLP[task]
    train = config["train"]
    assert (train["optimizer"], train["lr"], train["layer_decay"], train["weight_decay"]) == (
        "adamw", lr, layer_decay, 5e-4)
    assert (train["steps"], train["lr_warmup_steps"], train["batch_size"], train["uratio"]) == (
        102400, 5120, 8, 1)
    assert (train["eval_every"], train["eval_batch_size"], train["ema_decay"], train["precision"]) == (
        2048, 8, 0.0, "fp32")
    assert config["models"]["bert_base_uncased"] == {
        "name_or_path": "bert-base-uncased", "max_length": 512, "dropout": 0.1,
        "pooling": "view_positions"}
    assert config["algorithm_overrides"]["pimodel"]["ema_decay"] == 0.999
    assert all(override.get("uratio", 1) == 1 for override in config["algorithm_overrides"].values())
    assert config["algorithms"]["uda"]["tsa_schedule"] == "exp"
    assert config["algorithms"]["comatch"]["queue_batches"] == 128
    assert config["algorithms"]["crmatch"]["lambda_rot"] == 0.0
    # semilearn's config/usb_nlp/{mixmatch,remixmatch}: mixup_manifold True, rot_loss_ratio 0
    assert config["algorithms"]["mixmatch"] == {"T": 0.5, "mixup_alpha": 0.5, "lambda_u": 100.0,
                                                "rampup_fraction": 0.4, "mixup_space": "by_modality",
                                                "mixed_features_gradient": "none"}
    assert config["algorithms"]["remixmatch"] == {
        "T": 0.5, "mixup_alpha": 0.75, "lambda_u": 1.5, "lambda_pre_mixup": 0.5, "lambda_rot": 0.0,
        "rampup_fraction": 0.015625, "alignment_momentum": 0.999, "mixup_space": "by_modality",
        "mixed_features_gradient": "none"}
    assert config["algorithms"]["vat"] == {"eps": 6.0, "xi": 1e-6, "power_iteration_precision":
                                           "float32", "lambda_u": 1.0, "lambda_entropy": 0.06,
                                           "rampup_fraction": 0.4}
    assert config["reports"]["selection"] == "at_best_validation"
    assert config["reports"]["published"] == "reference/published_usb_nlp.csv"
    run = study_of(task).run_config(task, budgets[0], "pimodel", 0)
    assert run.train["ema_decay"] == 0.999 and "horizontal_flip" not in run.train


def test_usbs_published_nlp_numbers_cover_every_task_budget_and_algorithm():
    rows = [row for row in read_published(ROOT / "reference/published_usb_nlp.csv")
            if row["source"] == "USB NLP results, semilearn 0.3.0"]
    assert len(rows) == 180
    cells = {(row["dataset"], row["n_labels"], row["algorithm"]) for row in rows}
    for task, (budgets, _, _) in USB_NLP.items():
        for n_labels in budgets:
            assert {cell[2] for cell in cells if cell[:2] == (task, n_labels)} == (
                set(algorithm_cards()) - {"defixmatch"})
    fixmatch_ag_news_40 = next(row for row in rows if (row["dataset"], row["n_labels"],
                               row["algorithm"]) == ("ag_news", 40, "fixmatch"))
    assert (fixmatch_ag_news_40["error_mean"], fixmatch_ag_news_40["error_std"]) == (30.17, 1.87)


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(USB_NLP))
def test_usb_nlp_study_dry_runs_offline_every_algorithm_budget_and_seed(task, tmp_path):
    """`snakemake -n` plans 2 budgets x 19 algorithms x 3 seeds = 114 training runs, offline."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                             str(ROOT / "Snakefile"), "--configfile",
                             str(CONFIGS / f"usb-nlp-{task}.yaml"), "--cores", "2", "--dry-run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = set(re.findall(rf"results/usb-nlp-{task}/{task}-(\d+)/(\w+)/seed(\d)/metrics\.json",
                             result.stdout))
    study = study_of(task).config["study"]
    assert planned == {(str(n), algorithm, str(seed)) for n in study["n_labels"]
                       for algorithm in study["algorithms"] for seed in study["seeds"]}
    assert len(planned) == 114


def test_a_text_dataset_needs_a_text_network_and_the_reverse():
    from pipeline.config import default_params
    from pipeline.errors import UserError

    def problems(**study) -> str:
        config = default_params()
        config["study"].update(study)
        with pytest.raises(UserError) as error:
            load_study(config)
        return str(error.value)

    assert "ag_news is a text dataset but study.model small_cnn" in problems(dataset="ag_news",
                                                                              n_labels=[40])
    assert "digits is an image dataset but study.model bert_base_uncased" in problems(
        model="bert_base_uncased")


def test_selection_at_best_validation_needs_a_validation_split():
    from pipeline.config import default_params
    from pipeline.errors import UserError

    config = default_params()
    config["reports"]["selection"] = "at_best_validation"
    with pytest.raises(UserError, match="digits has no validation split"):
        load_study(config)


def test_the_published_table_puts_usbs_nlp_numbers_beside_ours():
    from pipeline.reports.tables import render_published

    def summary(algorithm: str, n_labels: int, error: float) -> dict:
        stats = {"mean": error, "std": 0.5, "n": 3, "values": [error - 0.5, error, error + 0.5]}
        return {"study": "usb-nlp-ag_news", "dataset": "ag_news", "n_labels": n_labels,
                "algorithm": algorithm, "model": "bert_base_uncased", "last_k": 20,
                "metrics": {"ema/at_best_validation_error": stats},
                "seeds": [{"seed": s, "mlflow_run_id": f"r{s}", "config_hash": "c", "code_digest": "d",
                           "split_sha256": "s", "dataset_digest": "x", "git_commit": "abc",
                           "wall_seconds": 1.0} for s in range(3)]}

    rows = read_published(ROOT / "reference/published_usb_nlp.csv")
    table = render_published([summary("fixmatch", n, 20.0) for n in (40, 200)], rows, "ema",
                             "at_best_validation")
    assert r"30.17 $\pm$ 1.87" in table and r"11.71 $\pm$ 1.95" in table
    assert "USB NLP results, semilearn 0.3.0" in table
