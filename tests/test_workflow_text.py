"""USB's NLP protocol in miniature through the whole workflow (configs/usb-nlp-smoke.yaml): a
tiny BERT and a tiny AG News-shaped release made by tools/nlp_smoke.py, downloaded from a
file:// mirror, split, trained by algorithms unchanged (two strong views for CoMatch),
evaluated on the dev and test sets, tabulated, logged to MLflow."""
import json
import shutil

import pytest

from conftest import snakemake
from nlp_smoke import make_release, make_tiny_bert
from pipeline.config import ROOT

pytestmark = pytest.mark.slow
ALGORITHMS = ["supervised", "fixmatch", "flexmatch", "comatch"]


@pytest.fixture(scope="module")
def nlp_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nlp")
    make_tiny_bert(workdir / "data/usb-nlp-smoke/tiny-bert")
    make_release(workdir / "data/usb-nlp-smoke/ag_news")
    shutil.copy(ROOT / "configs" / "usb-nlp-smoke.yaml", workdir)
    result = snakemake(workdir, "--cores", "2", "--configfile", "usb-nlp-smoke.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_every_algorithm_trains_on_text_and_the_table_has_each(nlp_study):
    table = (nlp_study / "reports/usb-nlp-smoke/tables/main.tex").read_text()
    for name in ("Supervised", "FixMatch", "FlexMatch", "CoMatch"):
        assert name in table
    assert "lowest validation error" in table
    metrics = json.loads((nlp_study / "reports/usb-nlp-smoke/metrics.json").read_text())
    assert sorted(metrics["ag_news-8"]) == sorted(ALGORITHMS)


def test_runs_evaluate_dev_and_test_and_select_on_dev(nlp_study):
    import csv

    for algorithm in ALGORITHMS:
        run = nlp_study / f"results/usb-nlp-smoke/ag_news-8/{algorithm}/seed0"
        curve = list(csv.DictReader((run / "evaluations.csv").open()))
        assert [int(row["step"]) for row in curve] == [10, 20, 30, 40]
        metrics = json.loads((run / "metrics.json").read_text())
        validation = [float(row["ema/validation_error"]) for row in curve]
        chosen = curve[validation.index(min(validation))]
        assert metrics["metrics"]["ema/at_best_validation_error"] == float(chosen["ema/error"])
        assert metrics["run"]["model"] == "bert_base_uncased"
        assert metrics["run"]["train"]["optimizer"] == "adamw"
        assert "horizontal_flip" not in metrics["run"]["train"]


def test_the_manifest_counts_texts_and_mlflow_has_every_run(nlp_study):
    from mlflow.tracking import MlflowClient

    manifest = next((nlp_study / "data/raw/ag_news").glob("*/manifest.json"))
    shapes = json.loads(manifest.read_text())["shapes"]
    assert shapes == {"train_texts": [96, 3], "validation_texts": [24], "test_texts": [40]}
    assert len(list(manifest.parent.glob("tokens/*.pt"))) == 1   # tokenised once for all runs
    client = MlflowClient(f"sqlite:///{nlp_study}/mlflow.db")
    experiment = client.get_experiment_by_name("usb-nlp-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["algorithm"] for run in runs) == sorted(ALGORITHMS)
    assert all(run.info.status == "FINISHED" for run in runs)
