"""Variants (params.yaml's `variants:`, pipeline/variants.py): one registered algorithm run with
other settings as a table row of its own, e.g. the Dash paper's FixMatch (CTA) beside FixMatch
(RA). Checked here: the config's errors, the run configs (a variant's hash is its own, a plain
run's is what it was before variants existed), the reports keyed by row with its label and its
published numbers, and a dry run that lists every row's jobs."""
import copy
import json
import math

import pytest

from conftest import snakemake
from pipeline.config import ROOT, RunConfig, load_params, load_study
from pipeline.errors import ConfigError
from pipeline.reports.figures import figure_algorithms, figures_for, stats_algorithms
from pipeline.reports.report_pages import run_times_page
from pipeline.reports.tables import Results, main_table, metrics_document, published_table

CTA = {"strong_augment": "ctaugment"}
VARIANTS = {"fixmatch_cta": {"algorithm": "fixmatch", "label": "FixMatch (CTA)", "train": CTA},
            "dash_cta": {"algorithm": "dash", "label": "Dash (CTA)", "train": CTA}}
LABELS = {"fixmatch": "FixMatch (RA)", "dash": "Dash (RA)"}


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def with_variants(params, edit=None) -> dict:
    """params.yaml with the Dash paper's four rows (and `edit` applied)."""
    config = copy.deepcopy(params)
    config["variants"] = copy.deepcopy(VARIANTS)
    config["study"]["algorithms"] = ["supervised", "fixmatch", "fixmatch_cta", "dash", "dash_cta"]
    config["reports"]["labels"] = dict(LABELS)
    if edit:
        edit(config)
    return config


def error_for(config) -> str:
    with pytest.raises(ConfigError) as caught:
        load_study(config)
    return " ".join(str(caught.value).split())


# ---- the config --------------------------------------------------------------------------------
def test_a_config_without_variants_loads_as_before(params):
    """Old config files have no `variants:` section: it is optional, and none is the default."""
    assert "variants" not in params and "labels" not in params["reports"]
    study = load_study(params)
    assert study.row_algorithms() == {row: row for row in params["study"]["algorithms"]}
    assert study.row_labels()["fixmatch"] == "FixMatch"


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["variants"].update(fixmatch={"algorithm": "fixmatch", "label": "F"}),
     ["variants.fixmatch: 'fixmatch' is a registered algorithm's name", "rename it, e.g. "
      "fixmatch_cta"]),
    (lambda c: c["variants"].update({"FixMatch-CTA": {"algorithm": "fixmatch", "label": "F"}}),
     ["variants has the key 'FixMatch-CTA', which is not allowed", "lower-case letters, digits "
      "and _"]),
    (lambda c: c["variants"]["fixmatch_cta"].update(algorithm="fixmach"),
     ["variants.fixmatch_cta.algorithm = 'fixmach' is not allowed (did you mean 'fixmatch'?)"]),
    (lambda c: (c["variants"]["fixmatch_cta"].update(algorithm="comatch"),
                c["algorithms"].pop("comatch")),
     ["variants.fixmatch_cta.algorithm is 'comatch', which has no entry under `algorithms:`",
      "add `algorithms: {comatch: {...}}`"]),
    (lambda c: c["variants"]["fixmatch_cta"].pop("label"),
     ["variants.fixmatch_cta lacks a required key: 'label'"]),
    (lambda c: c["variants"]["fixmatch_cta"]["train"].update(device="cuda"),
     ["unknown key variants.fixmatch_cta.train.'device'"]),
    (lambda c: c["variants"]["fixmatch_cta"]["train"].update(strong_augment="cta"),
     ["variants.fixmatch_cta.train.strong_augment = 'cta' is not allowed"]),
    (lambda c: c["variants"]["fixmatch_cta"].update(algorithm_params={"tau": 1.5}),
     ["variants.fixmatch_cta.algorithm_params.tau = 1.5 is not allowed", "<= 1"]),
    (lambda c: c["study"]["algorithms"].append("fixmatch_ctaa"),
     ["study.algorithms.5 = 'fixmatch_ctaa' is not allowed (did you mean 'fixmatch_cta'?)"]),
    (lambda c: c["reports"]["labels"].update(fixmatch_cta="CTA"),
     ["reports.labels names the variant 'fixmatch_cta'", "set variants.fixmatch_cta.label "
      "instead"]),
    (lambda c: c["reports"]["labels"].update(uda="UDA (RA)"),
     ["reports.labels names 'uda', which is not in study.algorithms"]),
    (lambda c: c["reports"]["labels"].update(fixmatch="FixMatch (CTA)"),
     ["the rows 'fixmatch' and 'fixmatch_cta' of study.algorithms would both be named "
      "'FixMatch (CTA)'", "give each its own label"]),
])
def test_each_mistake_in_a_variant_names_the_key_and_the_fix(params, edit, expected):
    message = error_for(with_variants(params, edit))
    for text in expected:
        assert text in message, message


def test_a_variant_runs_its_algorithm_with_its_settings_merged_on_the_studys(params):
    config = with_variants(params, lambda c: c["variants"]["fixmatch_cta"].update(
        train={**CTA, "ctaugment": {"depth": 3}}, algorithm_params={"tau": 0.9}))
    study = load_study(config)
    plain = study.run_config("digits", 10, "fixmatch", 0)
    variant = study.run_config("digits", 10, "fixmatch_cta", 0)
    assert (variant.algorithm, variant.variant, variant.row) == ("fixmatch", "fixmatch_cta",
                                                                 "fixmatch_cta")
    assert variant.train == {**plain.train, **CTA,
                             "ctaugment": {**plain.train["ctaugment"], "depth": 3}}
    assert variant.algorithm_params == {**plain.algorithm_params, "tau": 0.9}
    assert variant.config_hash != plain.config_hash
    assert RunConfig.from_json(variant.to_json()) == variant
    assert study.row_algorithms()["dash_cta"] == "dash"
    assert study.row_labels() == {"supervised": "Supervised", "fixmatch": "FixMatch (RA)",
                                  "fixmatch_cta": "FixMatch (CTA)", "dash": "Dash (RA)",
                                  "dash_cta": "Dash (CTA)"}


def test_a_variant_with_the_algorithms_own_settings_is_still_a_run_of_its_own(params):
    """Its name is in its config: its hash (and so its results and MLflow run) is not the plain
    algorithm's, as a study's name makes its runs its own."""
    study = load_study(with_variants(params, lambda c: c["variants"]["fixmatch_cta"].pop("train")))
    plain = study.run_config("digits", 10, "fixmatch", 0)
    variant = study.run_config("digits", 10, "fixmatch_cta", 0)
    assert variant.train == plain.train and variant.config_hash != plain.config_hash


def test_a_plain_run_serializes_and_hashes_as_before_variants_existed(params):
    """The committed digits reports name each run's config hash: a run without a variant has no
    `variant` key, so the hash of reports/digits/metrics.json's first Dash run is unchanged,
    and a run config written before variants existed is read as it was."""
    committed = json.loads((ROOT / "reports/digits/metrics.json").read_text())
    study = load_study(with_variants(params))   # variants in the study change no other run
    n_labels = params["study"]["n_labels"][0]
    for seed, recorded in enumerate(committed[f"digits-{n_labels}"]["dash"]["runs"]):
        run = study.run_config("digits", n_labels, "dash", seed)
        assert run.variant is None and "variant" not in run.as_dict()
        assert "variant" not in json.loads(run.to_json())
        assert run.config_hash == recorded["config_hash"]
        assert RunConfig.from_json(run.to_json()) == run


# ---- the reports -------------------------------------------------------------------------------
def summary(algorithm: str, variant: str | None, n_labels: int, values: list[float]) -> dict:
    """A hand-made summary (what pipeline/runs/evaluate.py writes) of one row and label budget."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return {"study": "dash-cifar10", "dataset": "cifar10", "n_labels": n_labels,
            "algorithm": algorithm, **({"variant": variant} if variant else {}),
            "model": "wrn_28_2", "last_k": 20,
            "metrics": {"ema/best_error": {"mean": mean, "std": std, "n": len(values),
                                           "values": values}},
            "seeds": [{"seed": seed, "config_hash": f"{algorithm}{variant}", "code_digest": "c",
                       "split_sha256": "s", "dataset_digest": "d"} for seed in range(len(values))]}


SUMMARIES = [summary("fixmatch", None, 250, [5.0, 5.4]),
             summary("fixmatch", "fixmatch_cta", 250, [4.9, 5.0]),
             summary("dash", None, 250, [4.5, 4.7]),
             summary("dash", "dash_cta", 250, [4.6, 4.9])]
ROW_LABELS = {**LABELS, "fixmatch_cta": "FixMatch (CTA)", "dash_cta": "Dash (CTA)"}


def published(source: str, algorithm: str, mean: float) -> dict:
    return {"source": source, "reference": "ref", "selection": "median of last 20",
            "networks": "WRN-28-2", "algorithm": algorithm, "dataset": "cifar10",
            "n_labels": 250, "error_mean": mean, "error_std": 0.1}


def test_the_tables_key_rows_by_variant_and_name_them_by_their_labels():
    results = Results(SUMMARIES, "ema", "best", ROW_LABELS)
    assert results.algorithms == ["fixmatch", "fixmatch_cta", "dash", "dash_cta"]
    table = main_table(results)
    assert [row[0].text for row in table.rows] == ["FixMatch (RA)", "FixMatch (CTA)",
                                                   "Dash (RA)", "Dash (CTA)"]
    assert [row[1].text for row in table.rows] == ["5.20 ± 0.28", "4.95 ± 0.07", "4.60 ± 0.14",
                                                   "4.75 ± 0.21"]
    assert "250 labels: Dash (RA) lowest" in table.notes[-1]
    assert set(metrics_document(SUMMARIES)["cifar10-250"]) == {"fixmatch", "fixmatch_cta",
                                                                "dash", "dash_cta"}


def test_each_row_gets_the_published_numbers_of_its_own_augmentation():
    """The CSV's `algorithm` column names the row: the RandAugment numbers (keyed by the
    algorithm) stand beside the RA rows, the CTAugment numbers (keyed fixmatch_cta) beside the
    CTA row, and a row without numbers gets dashes."""
    rows = [published("FixMatch paper (RA)", "fixmatch", 5.07),
            published("FixMatch paper (CTA)", "fixmatch_cta", 5.07 - 0.5),
            published("Dash paper (RA)", "dash", 4.56)]
    table = published_table(Results(SUMMARIES, "ema", "best", ROW_LABELS), rows)
    cells = {row[0].text: [(cell.text, cell.mark) for cell in row[1:]] for row in table.rows}
    assert cells["FixMatch (RA)"][1] == ("5.07 ± 0.10", "a")
    assert cells["FixMatch (CTA)"][1] == ("4.57 ± 0.10", "b")
    assert cells["Dash (RA)"][1] == ("4.56 ± 0.10", "c")
    assert cells["Dash (CTA)"][1:] == [("–", ""), ("–", "")]
    assert len(table.rows) == 4   # no RA number beside a CTA row, nor the other way round


def test_a_variant_gets_its_algorithms_figures_and_its_label_on_the_run_times_page():
    algorithm_of = {"fixmatch": "fixmatch", "fixmatch_cta": "fixmatch", "dash": "dash",
                    "dash_cta": "dash", "supervised": "supervised"}
    rows = list(algorithm_of)
    assert figure_algorithms("dash_rho", rows, algorithm_of) == ["dash", "dash_cta"]
    assert "dash_rho" in figures_for(["supervised", "dash_cta"], algorithm_of)
    assert stats_algorithms(rows, algorithm_of) == ["fixmatch", "fixmatch_cta", "dash",
                                                    "dash_cta"]
    job = {"n_labels": 250, "algorithm": "dash_cta", "seed": 0, "job_seconds": 3600.0,
           "cpu_seconds": 1.0, "max_rss_mb": 1.0, "steps_per_second": 1.0, "device": "cuda:0",
           "threads": 4, "resumed_from_step": 0}
    page = run_times_page([job], ROW_LABELS)
    assert page.count("<td>Dash (CTA)</td>") == 2 and "dash_cta" not in page


# ---- the workflow ------------------------------------------------------------------------------
def test_a_dry_run_lists_every_row_budget_and_seed_with_the_rows_labels(tmp_path):
    config = {"study": {"name": "rows", "n_labels": [10, 50], "seeds": [0, 1],
                        "algorithms": ["fixmatch", "fixmatch_cta"]},
              "variants": {"fixmatch_cta": VARIANTS["fixmatch_cta"]},
              "reports": {"labels": {"fixmatch": "FixMatch (RA)"}}}
    (tmp_path / "rows.yaml").write_text(json.dumps(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", "--printshellcmds", "--configfile",
                       "rows.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("fixmatch", "fixmatch_cta"):
        for n_labels in (10, 50):
            for seed in (0, 1):
                assert f"results/rows/digits-{n_labels}/{row}/seed{seed}/metrics.json" \
                    in result.stdout
    assert "--labels '{\"fixmatch\": \"FixMatch (RA)\", \"fixmatch_cta\": \"FixMatch (CTA)\"}'" \
        in result.stdout


def write_run(folder, algorithm: str, variant: str | None, seed: int, errors: list[float]):
    """What a train job writes (metrics.json, run.json, evaluations.csv), by hand: one run of a
    row on digits with 10 labels."""
    folder.mkdir(parents=True)
    run = {"study": "rows", "dataset": "digits", "n_labels": 10, "seed": seed,
           "algorithm": algorithm, "model": "small_cnn", "train": {"last_k": 2},
           **({"variant": variant} if variant else {})}
    (folder / "metrics.json").write_text(json.dumps({
        "metrics": {"ema/best_error": min(errors)}, "run": run, "config_hash": "h",
        "code_digest": "c", "split_sha256": "s", "dataset_digest": "d", "git_commit": "g"}))
    (folder / "run.json").write_text(json.dumps({"mlflow_run_id": f"r{seed}",
                                                 "wall_seconds": 1.0}))
    (folder / "evaluations.csv").write_text(
        "step,ema/error\n" + "".join(f"{3 * (i + 1)},{e}\n" for i, e in enumerate(errors)))


def test_a_variants_summary_and_curves_are_its_rows(tmp_path):
    """evaluate names the variant in its summary (the tables' row key); the figures group runs by
    row and name each curve by its label."""
    from pipeline.reports.figures import write_curves
    from pipeline.reports.plotting import group_runs, row_algorithms
    from pipeline.runs.evaluate import main as evaluate

    for row, variant, errors in (("fixmatch", None, [50.0, 40.0]),
                                 ("fixmatch_cta", "fixmatch_cta", [45.0, 30.0])):
        for seed in (0, 1):
            write_run(tmp_path / row / f"seed{seed}", "fixmatch", variant, seed, errors)
        evaluate(["--metrics", *(str(tmp_path / row / f"seed{s}/metrics.json") for s in (0, 1)),
                  "--out", str(tmp_path / row / "summary.json")])
    plain, variant = (json.loads((tmp_path / row / "summary.json").read_text())
                      for row in ("fixmatch", "fixmatch_cta"))
    assert "variant" not in plain and variant["variant"] == "fixmatch_cta"
    assert variant["algorithm"] == "fixmatch" and variant["metrics"]["ema/best_error"]["mean"] == 30
    evaluations = [tmp_path / row / f"seed{s}/evaluations.csv" for row in ("fixmatch",
                                                                            "fixmatch_cta")
                   for s in (0, 1)]
    assert list(group_runs(evaluations)) == [("digits", 10, "fixmatch"),
                                             ("digits", 10, "fixmatch_cta")]
    assert row_algorithms(evaluations) == {"fixmatch": "fixmatch", "fixmatch_cta": "fixmatch"}
    (curves,) = write_curves(group_runs(evaluations), "ema", tmp_path / "plots",
                             {"fixmatch": "FixMatch (RA)", "fixmatch_cta": "FixMatch (CTA)"})
    assert curves.read_text() == ("step,FixMatch (RA),FixMatch (CTA)\n"
                                  "3,50.0000,45.0000\n6,40.0000,30.0000\n")


def test_a_variants_mlflow_run_is_named_and_tagged_after_it(params):
    from pipeline.runs.train import mlflow_params, mlflow_tags, run_name

    study = load_study(with_variants(params))
    variant = study.run_config("digits", 10, "fixmatch_cta", 0)
    plain = study.run_config("digits", 10, "fixmatch", 0)
    assert (run_name(variant), run_name(plain)) == ("fixmatch_cta-digits-10-seed0",
                                                    "fixmatch-digits-10-seed0")
    assert mlflow_params(variant)["variant"] == "fixmatch_cta" and "variant" not in \
        mlflow_params(plain)
    provenance = {"git_commit": "abc"}
    assert mlflow_tags(variant, provenance, "cpu")["variant"] == "fixmatch_cta"
    assert mlflow_tags(variant, provenance, "cpu")["algorithm"] == "fixmatch"
    assert "variant" not in mlflow_tags(plain, provenance, "cpu")
