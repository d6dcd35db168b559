"""Rule `tables`: the study's tables, each as LaTeX (booktabs) and as its table model (JSON, which
the rule `report_pages` renders as HTML), and reports/<study>/metrics.json (for `dvc metrics`).

  main        test error rate mean ± std over seeds per row and label budget; bold: the
              lowest mean of each column; †: a cell that a paired t-test over the seeds (which
              share their labeled splits) cannot tell from it
  published   given a CSV of published numbers: ours beside them, with the difference

A row is a registered algorithm or a variant of one (pipeline/variants.py): the summaries name it
(pipeline/reports/naming.py: row_name), and --labels gives each row's name in the tables.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from ..errors import UserError, argument_parser, cli
from ..files import read_json, write_json, write_text
from ..runs.evaluate import PROVENANCE
from .naming import data_name, label_of, read_labels, row_name
from .table_model import Cell, Table, to_latex

SELECTION_TEXT = {
    "best": "the best test error over training",
    "last": "the test error at the last evaluation",
    "median": "the median test error over the last {k} evaluations",
    "mean": "the mean test error over the last {k} evaluations",
    "at_best_validation": "the test error at the lowest validation error (USB's NLP and audio tasks)",
}
ALPHA = 0.05   # a cell is significantly worse than the column's best when p < ALPHA
TIED = "†"     # the mark of a cell the paired test cannot tell from the column's best


def metric_key(model: str, selection: str, last_k: int) -> str:
    return f"{model}/{selection}{last_k if selection in ('median', 'mean') else ''}_error"


def paired_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test of equal means over the same seeds (NaN with fewer than 2)."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    if len(differences) < 2:
        return math.nan
    if len(set(differences)) == 1:   # no spread: equal, or different on every seed
        return 1.0 if differences[0] == 0 else 0.0
    from scipy.stats import ttest_rel

    return float(ttest_rel(a, b).pvalue)


class Column:
    """One label budget of a table: each row's seed statistics, the lowest mean and the p-value
    of every other cell against it; `labels`: the rows' names in the notes."""

    def __init__(self, n_labels: int, cells: dict[str, dict], seeds: dict[str, list[int]],
                 labels: dict[str, str] | None = None):
        self.n_labels, self.cells, self.labels = n_labels, cells, labels or {}
        self.best = min(cells, key=lambda algorithm: cells[algorithm]["mean"])
        by_seed = {a: dict(zip(seeds[a], cells[a]["values"], strict=True)) for a in cells}
        common = lambda a: sorted(set(by_seed[a]) & set(by_seed[self.best]))
        self.p_values = {a: paired_p_value([by_seed[a][s] for s in common(a)],
                                           [by_seed[self.best][s] for s in common(a)])
                         for a in cells if a != self.best}

    def is_bold(self, algorithm: str) -> bool:
        """The lowest mean, as printed (two cells that print the same lowest mean both are)."""
        return mean_std(self.cells[algorithm]["mean"], None) == \
            mean_std(self.cells[self.best]["mean"], None)

    def is_tied(self, algorithm: str) -> bool:
        """Not the lowest mean, but the paired test cannot tell it from it (p >= ALPHA)."""
        if self.is_bold(algorithm):
            return False
        p = self.p_values[algorithm]
        return not math.isnan(p) and p >= ALPHA

    def note(self) -> str:
        lowest = " and ".join(label_of(a, self.labels) for a in self.cells if self.is_bold(a))
        tied = [f"{label_of(a, self.labels)} (p = {p:.2f})" for a, p in self.p_values.items()
                if self.is_tied(a)]
        if all(math.isnan(p) for p in self.p_values.values()) and self.p_values:
            return f"{self.n_labels} labels: {lowest} lowest; one seed, so no test."
        if not tied:
            return (f"{self.n_labels} labels: {lowest} lowest, and every other cell is "
                    f"significantly worse (p < {ALPHA}).")
        return f"{self.n_labels} labels: {lowest} lowest; {TIED}: {', '.join(tied)}."


class Results:
    """The summaries of one study as the tables read them: which metric, the label budgets, the
    rows (algorithms and variants, keyed by row_name) in study order with their labels, and a
    Column per budget."""

    def __init__(self, summaries: list[dict], model: str, selection: str,
                 labels: dict[str, str] | None = None):
        first = summaries[0]
        self.study, self.dataset, self.network = first["study"], first["dataset"], first["model"]
        self.data = data_name(self.dataset, self.study)   # as captions name it
        self.last_k, self.model, self.selection = first["last_k"], model, selection
        self.key = metric_key(model, selection, self.last_k)
        self.n_seeds = first["metrics"][self.key]["n"]
        self.budgets = sorted({s["n_labels"] for s in summaries})
        self.labels = labels or {}
        self.algorithms = list(dict.fromkeys(row_name(s) for s in summaries))   # the rows
        self.columns = {n: Column(n, {row_name(s): s["metrics"][self.key] for s in summaries
                                      if s["n_labels"] == n},
                                  {row_name(s): [seed["seed"] for seed in s["seeds"]]
                                   for s in summaries if s["n_labels"] == n}, self.labels)
                        for n in self.budgets}

    def label(self, row: str) -> str:
        return label_of(row, self.labels)

    def ours(self, algorithm: str, n_labels: int) -> Cell:
        stats = self.columns[n_labels].cells.get(algorithm)
        if stats is None:
            return Cell("–")
        column = self.columns[n_labels]
        return Cell(mean_std(stats["mean"], stats["std"]), bold=column.is_bold(algorithm),
                    mark=TIED if column.is_tied(algorithm) else "")

    def rule(self) -> str:
        return SELECTION_TEXT[self.selection].format(k=self.last_k)

    def notes(self) -> list[str]:
        return [f"Every column: {self.rule()} (checkpoint rule) of the {self.model.upper()} "
                f"weights of {self.network}, mean ± std over {self.n_seeds} seeds.",
                f"Bold: the lowest mean of a column. {TIED}: a cell that a two-sided paired t-test "
                f"over the seeds (which share their labeled splits) cannot tell from it (p ≥ "
                f"{ALPHA}). The test pairs the seeds: a mean close to the lowest is significantly "
                f"worse when it is worse on every seed, and a farther one may not be when the "
                f"seeds disagree.",
                *(self.columns[n].note() for n in self.budgets)]


def name_cell(results: Results, row: str) -> Cell:
    return Cell(results.label(row))


def main_table(results: Results) -> Table:
    return Table(
        label=f"tab:{results.study}-{results.dataset}-main",
        caption=(f"Test error rate (%) on {results.data}, mean ± std over {results.n_seeds} "
                 f"seeds; {results.rule()} of the {results.model.upper()} model. Bold: the lowest "
                 f"mean of each column; {TIED}: the paired test cannot tell it from the lowest "
                 f"(notes)."),
        header=[[Cell("Algorithm"), *(Cell(f"{n} labels") for n in results.budgets)]],
        rows=[[name_cell(results, a), *(results.ours(a, n) for n in results.budgets)]
              for a in results.algorithms],
        notes=results.notes())


def render(summaries: list[dict], model: str, selection: str,
           labels: dict[str, str] | None = None) -> str:
    return to_latex(main_table(Results(summaries, model, selection, labels)))


# ---------------------------------------------------------------------------------------------
# Published numbers beside ours (reference/published_results.csv, see reference/README.md).

PUBLISHED_COLUMNS = ("source", "reference", "selection", "networks", "algorithm", "dataset",
                     "n_labels", "error_mean", "error_std")


def read_published(path: Path) -> list[dict]:
    """Rows of the published-numbers CSV, with n_labels, error_mean and error_std (None when
    empty) as numbers."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in PUBLISHED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; its header must "
                                f"be {','.join(PUBLISHED_COLUMNS)} (see reference/README.md)")
            rows = list(reader)
    except FileNotFoundError as error:
        raise UserError(f"the published numbers file {path} does not exist; fix reports.published "
                        f"in the study's config or remove it") from error
    parsed = []
    for line, row in enumerate(rows, start=2):
        try:
            std = row["error_std"].strip()
            parsed.append({**row, "n_labels": int(row["n_labels"]),
                           "error_mean": float(row["error_mean"]),
                           "error_std": float(std) if std else None})
        except (ValueError, AttributeError) as error:
            raise UserError(f"{path}, line {line}: n_labels must be an integer and error_mean, "
                            f"error_std numbers (error_std may be empty); got {row}") from error
    return parsed


def selection_text(rule: str) -> str:
    """A published `selection` value in the words of our own tables' captions."""
    if rule in SELECTION_TEXT:
        return SELECTION_TEXT[rule].format(k=20)
    match = re.fullmatch(r"(median|mean) of (?:the )?last (\d+)(?: evaluations)?", rule.strip())
    if match:
        return SELECTION_TEXT[match.group(1)].format(k=match.group(2))
    return rule


def mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def difference(ours: float, published: float) -> str:
    delta = round(ours - published, 2)
    return "0.00" if delta == 0 else f"{delta:+.2f}".replace("-", "−")


Source = tuple[str, str, str]  # (source, reference, selection) columns of the published CSV


def source_of(row: dict) -> Source:
    return row["source"], row["reference"], row["selection"]


def source_letters(rows: list[dict]) -> dict[Source, str]:
    """a, b, c, ... for the sources in order of first appearance."""
    sources = dict.fromkeys(source_of(row) for row in rows)
    return {source: chr(ord("a") + i) if i < 26 else f"s{i + 1}"
            for i, source in enumerate(sources)}


def algorithm_rows(results: Results, algorithm: str, published: dict,
                   letters: dict[Source, str]) -> list[list[Cell]]:
    """One row per source with numbers for `algorithm` (a table row: a registered algorithm or a
    variant, which the CSV's `algorithm` column names; a single row when no source has numbers
    for it): per budget ours (on the first row), published (marked with its source) and ours -
    published."""
    sources = [s for s in letters
               if any((s, algorithm, n) in published for n in results.budgets)]
    rows = []
    for position, source in enumerate(sources or [None]):
        cells = [name_cell(results, algorithm) if position == 0 else Cell("")]
        for n in results.budgets:
            ours = results.columns[n].cells.get(algorithm)
            row = published.get((source, algorithm, n))
            cells.append(results.ours(algorithm, n) if position == 0 else Cell(""))
            if row is None:
                cells += [Cell("–"), Cell("–")]
                continue
            cells.append(Cell(mean_std(row["error_mean"], row["error_std"]),
                              mark=letters[source]))
            cells.append(Cell("–" if ours is None else difference(ours["mean"], row["error_mean"])))
        rows.append(cells)
    return rows


def source_notes(rows: list[dict], letters: dict[Source, str]) -> list[str]:
    """Per source: its letter, name, exact reference and networks."""
    notes = []
    for source, letter in letters.items():
        networks = "; ".join(dict.fromkeys(r["networks"] for r in rows if source_of(r) == source))
        notes.append(f"({letter}) {source[0]} ({source[1]}); networks: {networks}.")
    return notes


def published_caption(results: Results, letters: dict[Source, str], published_name: str) -> str:
    if letters:
        marks_by_rule: dict[str, list[str]] = {}
        for source, letter in letters.items():
            marks_by_rule.setdefault(selection_text(source[2]), []).append(letter)
        rules = "; ".join(f"({','.join(marks)}) {rule}" for rule, marks in marks_by_rule.items())
        published_text = ("as reported by the source its letter marks (notes below), with that "
                          f"source's checkpoint selection: {rules}")
    else:
        published_text = f"none for {results.data} in {published_name}"
    return (f"Reproduced and published test error rate (%) on {results.data}. Ours: "
            f"{results.rule()} of the {results.model.upper()} model, mean ± std over "
            f"{results.n_seeds} seeds; bold and {TIED} as in the main table. Published: "
            f"{published_text}. "
            f"Δ: ours − published (negative: a lower error than published); – where a number "
            f"is missing.")


def published_table(results: Results, published_rows: list[dict],
                    published_name: str = "the published numbers") -> Table:
    """Ours beside the published numbers of the same dataset, algorithms and label budgets, with
    the checkpoint-selection rule of every column in the caption."""
    rows = [r for r in published_rows if r["dataset"] == results.dataset
            and r["algorithm"] in results.algorithms and r["n_labels"] in results.budgets]
    letters = source_letters(rows)
    published = {(source_of(r), r["algorithm"], r["n_labels"]): r for r in rows}
    return Table(
        label=f"tab:{results.study}-{results.dataset}-published",
        caption=published_caption(results, letters, published_name),
        header=[[Cell(""), *(Cell(f"{n} labels", span=3) for n in results.budgets)],
                [Cell("Algorithm"), *[Cell(t) for _ in results.budgets
                                      for t in ("Ours", "Published", "Δ")]]],
        rows=[row for a in results.algorithms for row in algorithm_rows(results, a, published,
                                                                         letters)],
        notes=source_notes(rows, letters), wide=True)


def render_published(summaries: list[dict], published_rows: list[dict], model: str,
                     selection: str, published_name: str = "the published numbers",
                     labels: dict[str, str] | None = None) -> str:
    return to_latex(published_table(Results(summaries, model, selection, labels), published_rows,
                                    published_name))


def table_metrics(results: Results) -> dict:
    """The main table's numbers, for `dvc metrics show/diff`: {"<n> labels": {algorithm:
    {"error_mean": mean, "error_std": std}}} (the full record, every metric and run identity, is
    metrics.json). No key is named `error`: DVC takes one for a failure to load the file."""
    return {f"{n} labels": {a: {"error_mean": round(stats["mean"], 4),
                                "error_std": round(stats["std"], 4)}
                            for a, stats in results.columns[n].cells.items()}
            for n in results.budgets}


def metrics_document(summaries: list[dict]) -> dict:
    """Nested {dataset-n_labels: {row: {metric: mean, metric_std: std}}} for dvc metrics (a row:
    an algorithm or a variant),
    with each seed's run identity (config hash, code digest, split and data hashes: the MLflow
    run's tags). Only what a rerun on any machine reproduces: no MLflow run ids, no times."""
    document: dict = {}
    for summary in summaries:
        entry = document.setdefault(f"{summary['dataset']}-{summary['n_labels']}", {})
        values = {}
        for key, stats in summary["metrics"].items():
            values[key] = round(stats["mean"], 4)
            values[key + "_std"] = round(stats["std"], 4)
        values["runs"] = [{"seed": seed["seed"], **{key: seed[key] for key in PROVENANCE}}
                          for seed in summary["seeds"]]
        entry[row_name(summary)] = values
    return document


def write_table(table: Table, tex_path: Path) -> None:
    """The LaTeX file and, beside it, the table model (.json) that the HTML pages render."""
    write_text(tex_path, to_latex(table))
    write_json(tex_path.with_suffix(".json"), table.to_json())


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--summaries", nargs="+", required=True, type=Path)
    parser.add_argument("--selection", default="best", choices=sorted(SELECTION_TEXT))
    parser.add_argument("--model", default="ema", choices=["ema", "raw"])
    parser.add_argument("--table", required=True, type=Path,
                        help="the main table (.tex; its model goes beside it as .json)")
    parser.add_argument("--metrics", required=True, type=Path,
                        help="every metric and each seed's run identity (JSON)")
    parser.add_argument("--table-metrics", type=Path,
                        help="the main table's numbers only, for dvc metrics (JSON)")
    parser.add_argument("--published", type=Path,
                        help="CSV of published numbers (reference/README.md) to compare with")
    parser.add_argument("--published-table", type=Path,
                        help="where to write the comparison table (with --published)")
    parser.add_argument("--labels", type=read_labels, default={},
                        help="each row's name in the tables, as JSON {row: label} (the Snakefile "
                             "gives every row's); default: the algorithm's display name")
    args = parser.parse_args(argv)
    if (args.published is None) != (args.published_table is None):
        parser.error("--published and --published-table go together")
    summaries = [read_json(path, "summary") for path in args.summaries]
    results = Results(summaries, args.model, args.selection, args.labels)
    write_table(main_table(results), args.table)
    write_json(args.metrics, metrics_document(summaries))
    if args.table_metrics:
        write_json(args.table_metrics, table_metrics(results))
    print(f"wrote {args.table} and {args.metrics}")
    if args.published is not None:
        table = published_table(results, read_published(args.published), args.published.name)
        write_table(table, args.published_table)
        print(f"wrote {args.published_table} beside the published numbers of {args.published}")


if __name__ == "__main__":
    main()
