"""The tables: ours (best bold per label budget) and, beside the published numbers, the published
value with its source and the difference, on hand-made summaries with known answers."""
import json

import pytest

from pipeline.errors import UserError
from pipeline.reports.table_model import latex_escape
from pipeline.reports.tables import (difference, main, read_published, render,
                                     render_published, selection_text)

PUBLISHED_CSV = """\
source,reference,selection,networks,algorithm,dataset,n_labels,error_mean,error_std
Paper A,a/repo README.md,best,WRN-28-2,fixmatch,cifar10,40,7.47,0.28
Paper A,a/repo README.md,best,WRN-28-2,fixmatch,cifar10,250,4.86,0.05
Paper A,a/repo README.md,best,WRN-28-2,dash,cifar10,40,9.29,3.28
Sheet_B,b/repo results/Classic_CV.xls @123,median of last 20,WRN-28-2,fixmatch,cifar10,40,13.81,3.37
Paper A,a/repo README.md,best,WRN-28-2,remixmatch,cifar10,40,9.88,1.03
Paper A,a/repo README.md,best,WRN-28-8,fixmatch,cifar100,400,46.42,0.82
Paper A,a/repo README.md,best,WRN-28-2,fixmatch,cifar10,4000,4.21,0.08
"""


def summary(algorithm: str, n_labels: int, best: float, std: float = 0.5,
            dataset: str = "cifar10") -> dict:
    """As pipeline/runs/evaluate.py writes it (3 seeds)."""
    def stats(mean):
        return {"mean": mean, "std": std, "n": 3, "values": [mean - std, mean, mean + std]}
    return {"study": "paper", "dataset": dataset, "n_labels": n_labels, "algorithm": algorithm,
            "model": "wrn_28_2", "last_k": 20,
            "metrics": {"ema/best_error": stats(best), "ema/median20_error": stats(best + 1),
                        "raw/best_error": stats(best + 2)},
            "seeds": [{"seed": s, "mlflow_run_id": f"{algorithm}{n_labels}-{s}",
                       "config_hash": f"c{s}", "code_digest": "d", "split_sha256": f"s{s}",
                       "dataset_digest": "x", "git_commit": "abc", "wall_seconds": 1.0 + s}
                      for s in range(3)]}


SUMMARIES = [summary("pseudolabel", 40, 60.0), summary("fixmatch", 40, 5.0),
             summary("dash", 40, 8.0), summary("pseudolabel", 250, 30.0),
             summary("fixmatch", 250, 4.9), summary("dash", 250, 4.8, std=0.1)]


@pytest.fixture
def published(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED_CSV)
    return read_published(path)


@pytest.fixture
def table(published) -> str:
    return render_published(SUMMARIES, published, "ema", "best")


def line_of(table: str, start: str) -> list[str]:
    """The cells of the first table line starting with `start`."""
    line = next(line for line in table.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.removesuffix(r"\\").split("&")]


def test_main_table_bolds_the_best_mean_per_budget():
    table = render(SUMMARIES, "ema", "best")
    assert r"\textbf{5.00 $\pm$ 0.50}" in table and r"\textbf{4.80 $\pm$ 0.10}" in table
    assert "60.00 $\\pm$ 0.50" in table and r"\textbf{60.00" not in table


def test_published_table_puts_ours_published_and_difference_per_budget(table):
    cells = line_of(table, "FixMatch")
    assert cells[1:4] == [r"\textbf{5.00 $\pm$ 0.50}", "7.47 $\\pm$ 0.28$^{a}$", "$-$2.47"]
    # 4.90 +- 0.50 is not significantly worse than Dash's 4.80 +- 0.10 over the same 3 seeds
    assert cells[4:7] == [r"4.90 $\pm$ 0.50$^{\dag{}}$", "4.86 $\\pm$ 0.05$^{a}$", "+0.04"]


def test_best_of_ours_is_bold_per_budget(table):
    assert line_of(table, "Dash")[4] == r"\textbf{4.80 $\pm$ 0.10}"
    assert line_of(table, "Dash")[1] == "8.00 $\\pm$ 0.50"


def test_missing_published_numbers_show_dashes(table):
    assert line_of(table, "Pseudo-Label")[1:] == ["60.00 $\\pm$ 0.50", "--", "--",
                                                  "30.00 $\\pm$ 0.50", "--", "--"]
    assert line_of(table, "Dash")[5:] == ["--", "--"]  # Paper A has Dash at 40 labels only


def test_a_second_source_gets_its_own_line_without_repeating_ours(table):
    lines = table.splitlines()
    second = lines[lines.index(next(line for line in lines if line.startswith("FixMatch"))) + 1]
    cells = [cell.strip() for cell in second.removesuffix(r"\\").split("&")]
    assert cells[:4] == ["", "", "13.81 $\\pm$ 3.37$^{b}$", "$-$8.81"]
    assert cells[4:] == ["", "--", "--"]


def test_only_the_studys_dataset_algorithms_and_budgets_are_compared(table):
    assert "ReMixMatch" not in table and "remixmatch" not in table
    assert "46.42" not in table and "4.21" not in table  # CIFAR-100; 4000 labels not run


def test_caption_states_each_columns_checkpoint_selection(table):
    caption = next(line for line in table.splitlines() if line.startswith(r"\caption"))
    assert "Ours: the best test error over training of the EMA model" in caption
    assert "over 3 seeds" in caption
    assert "(a) the best test error over training;" in caption
    assert "(b) the median test error over the last 20 evaluations" in caption
    assert r"$\Delta$: ours $-$ published" in caption


def test_sources_with_the_same_selection_rule_share_it_in_the_caption(tmp_path):
    path = tmp_path / "published.csv"
    sheet_b = "Sheet_B,b/repo results/Classic_CV.xls @123,median of last 20"
    path.write_text(PUBLISHED_CSV.replace(sheet_b, "Sheet_B,b/repo,best"))
    table = render_published(SUMMARIES, read_published(path), "ema", "best")
    assert "(a,b) the best test error over training." in table


def test_notes_name_each_source_its_reference_and_networks_escaped(table):
    assert r"(a) Paper A (a/repo README.md); networks: WRN-28-2." in table
    assert r"(b) Sheet\_B (b/repo results/Classic\_CV.xls @123)" in table


def test_a_dataset_without_published_numbers_says_so(published):
    summaries = [summary("fixmatch", 40, 3.0, dataset="svhn")]
    table = render_published(summaries, published, "ema", "best", "published_results.csv")
    assert r"Published: none for svhn in published\_results.csv." in table
    assert line_of(table, "FixMatch")[1:] == [r"\textbf{3.00 $\pm$ 0.50}", "--", "--"]
    assert r"\footnotesize" not in table


def test_difference_is_ours_minus_published_rounded():
    assert difference(5.0, 7.47) == "−2.47"
    assert difference(4.9, 4.86) == "+0.04"
    assert difference(4.861, 4.86) == "0.00"


def test_selection_rules_read_like_our_captions():
    assert selection_text("best") == "the best test error over training"
    assert (selection_text("median of last 20")
            == "the median test error over the last 20 evaluations")
    assert selection_text("top_1") == "top_1"   # plain text: each renderer escapes it


def test_latex_special_characters_are_escaped():
    assert latex_escape("a_b & 50% #1 {x} $") == r"a\_b \& 50\% \#1 \{x\} \$"


def test_published_csv_without_a_column_is_a_user_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("source,algorithm,dataset,n_labels,error_mean\nA,fixmatch,cifar10,40,7.0\n")
    with pytest.raises(UserError, match="reference, selection, networks, error_std"):
        read_published(path)


def test_published_csv_with_a_bad_number_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(PUBLISHED_CSV.replace("7.47", "seven"))
    with pytest.raises(UserError, match="line 2"):
        read_published(path)


def test_empty_std_is_shown_as_mean_only(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED_CSV.replace("7.47,0.28", "7.47,"))
    table = render_published(SUMMARIES, read_published(path), "ema", "best")
    assert line_of(table, "FixMatch")[2] == "7.47$^{a}$"


def test_command_line_writes_both_tables_and_the_metrics(tmp_path):
    paths = []
    for s in SUMMARIES:
        paths.append(tmp_path / f"{s['algorithm']}-{s['n_labels']}.json")
        paths[-1].write_text(json.dumps(s))
    (tmp_path / "published.csv").write_text(PUBLISHED_CSV)
    main(["--summaries", *map(str, paths), "--table", str(tmp_path / "main.tex"),
          "--metrics", str(tmp_path / "metrics.json"),
          "--published", str(tmp_path / "published.csv"),
          "--published-table", str(tmp_path / "published.tex")])
    assert r"\textbf{5.00 $\pm$ 0.50}" in (tmp_path / "main.tex").read_text()
    assert "$-$2.47" in (tmp_path / "published.tex").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["cifar10-40"]["fixmatch"]["ema/best_error"] == 5.0
    # each seed's identity, the same wherever the study is rerun: no run ids, commits or times
    assert metrics["cifar10-40"]["fixmatch"]["runs"][1] == {
        "seed": 1, "config_hash": "c1", "code_digest": "d", "split_sha256": "s1",
        "dataset_digest": "x"}
    assert "abc" not in json.dumps(metrics) and "mlflow_run_id" not in json.dumps(metrics)


def test_published_without_an_output_table_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--summaries", "x.json", "--table", "t.tex", "--metrics", "m.json",
              "--published", "p.csv"])


def test_the_dash_tables_show_the_dash_papers_own_numbers():
    from pipeline.config import ROOT

    rows = read_published(ROOT / "reference/published_results.csv")
    table = render_published([summary("dash", n, 10.0) for n in (40, 250, 4000)], rows, "ema",
                             "best")
    assert r"13.22 $\pm$ 3.75" in table and r"4.08 $\pm$ 0.06" in table
    assert "Dash paper (RA)" in table and "unknown (FixMatch-TF codebase)" in table
    assert all(row["reference"] and row["selection"] for row in rows)


def test_dvc_metrics_hold_the_main_tables_numbers_only():
    from pipeline.reports.tables import Results, table_metrics

    metrics = table_metrics(Results(SUMMARIES, "ema", "best"))
    assert metrics == {"40 labels": {"pseudolabel": {"error_mean": 60.0, "error_std": 0.5},
                                     "fixmatch": {"error_mean": 5.0, "error_std": 0.5},
                                     "dash": {"error_mean": 8.0, "error_std": 0.5}},
                       "250 labels": {"pseudolabel": {"error_mean": 30.0, "error_std": 0.5},
                                      "fixmatch": {"error_mean": 4.9, "error_std": 0.5},
                                      "dash": {"error_mean": 4.8, "error_std": 0.1}}}
