"""DVC as users expect it: `dvc metrics show` loads the main table's numbers without complaint,
`dvc plots show` draws one chart per label budget with every algorithm's curve, on a page that
works offline, and CI's check that dvc.lock is current (tools/dvc_status.py)."""
import csv
import json
import subprocess
import sys

import yaml

from dvc_status import cached_outputs, problems
from pipeline.config import ROOT, default_params
from pipeline.workflow import place_plot_scripts
from semisup.catalog import display_name

DVC = [sys.executable, "-m", "dvc"]


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dvc_metrics_show_loads_the_main_tables_numbers():
    """A key named `error` made DVC print "DVC failed to load some metrics"."""
    result = dvc("metrics", "show", "--json")
    assert result.returncode == 0 and "failed" not in result.stderr.lower(), result.stderr
    metrics = json.loads(result.stdout)
    table = next(iter(metrics.values()))["data"]["reports/digits/table_metrics.json"]
    assert "error" not in table
    first_budget = default_params()["study"]["n_labels"][0]
    assert set(table["data"][f"{first_budget} labels"]["dash"]) == {"error_mean", "error_std"}


def test_dvc_plots_show_one_chart_per_label_budget_with_every_algorithm():
    study = default_params()["study"]
    algorithms = [display_name(name) for name in study["algorithms"]]
    result = dvc("plots", "show", "--json")
    assert result.returncode == 0, result.stderr
    plots = json.loads(result.stdout)["data"]
    assert list(plots) == [f"test error, {n} labels" for n in study["n_labels"]]
    for n_labels, (name, renderers) in zip(study["n_labels"], plots.items(), strict=True):
        values = renderers[0]["content"]["data"]["values"]
        assert list(dict.fromkeys(row["field"] for row in values)) == algorithms, name
        with open(ROOT / f"reports/digits/plots/{n_labels}-labels.csv", newline="") as handle:
            assert next(csv.reader(handle)) == ["step", *algorithms]


def test_the_plots_page_loads_its_scripts_from_beside_it(tmp_path, monkeypatch):
    out = tmp_path / "page"
    result = dvc("plots", "show", "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    assert page.index('<script src="vega.js"></script>') < page.index("cdn.jsdelivr.net")
    assert "{plot_divs}" not in page and page.count("vegaEmbed(") == 2
    monkeypatch.chdir(tmp_path)
    place_plot_scripts(out)   # not a DVC project here: nothing
    assert not (out / "vega.js").exists()
    (tmp_path / ".dvc").mkdir()
    place_plot_scripts(out)   # what each snakemake run does in the project
    assert {path.name for path in out.iterdir()} >= {"vega.js", "vega-lite.js", "vega-embed.js",
                                                     "vega.LICENSE"}


FRESH_CLONE = {"study": [{"changed outs": {"data": "not in cache", "results": "not in cache"}}]}


def test_a_fresh_clone_without_data_is_clean_and_a_stale_lock_is_named():
    cached = cached_outputs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert cached == {"data", "results"}
    assert problems(FRESH_CLONE, cached) == []
    stale = {"study": [{"changed deps": {"pipeline": "modified",
                                         "params.yaml": {"algorithms": "modified"}}},
                       {"changed outs": {"results": "not in cache",
                                         "reports/digits/tables": "modified",
                                         "data": "modified"}}]}
    assert problems(stale, cached) == [
        "study: deps pipeline modified", "study: deps params.yaml {'algorithms': 'modified'}",
        "study: outs reports/digits/tables modified", "study: outs data modified"]
