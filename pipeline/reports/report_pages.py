"""Rule `report_pages`: the HTML pages that `snakemake --report` shows beside the figures.

  tables.html     every table of the rule `tables`, rendered from its table model
                  (pipeline/reports/table_model.py) as HTML, with its caption, notes and LaTeX
                  source
  run_times.html  one row per training job: wall time and CPU time and peak memory from the
                  Snakemake `benchmark:` file, steps per second and device from the run's run.json

Plain HTML with inline CSS, so the pages stay readable inside the self-contained report.
"""
from __future__ import annotations

import csv
import html
from pathlib import Path

from ..errors import UserError, argument_parser, cli
from ..files import read_json, write_text
from .naming import label_of, read_labels, row_name
from .table_model import Table, to_html, to_latex

STYLE = """<style>
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.25em 0.8em; text-align: center; }
th:first-child, td:first-child { text-align: left; }
table.booktabs { border-top: 2px solid #000; border-bottom: 2px solid #000; }
tr.midrule > * { border-top: 1px solid #000; }
caption { caption-side: top; text-align: left; max-width: 60em; padding-bottom: 0.5em; }
pre { background: #f4f4f4; padding: 0.6em; font-size: 85%; overflow-x: auto; }
</style>"""
MIDRULE = ' class="midrule"'


def page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", STYLE, "</head><body>", *body,
                      "</body></html>", ""])


# ---- tables -------------------------------------------------------------------------------------
def tables_page(paths: list[Path], run_times: Path | None = None) -> str:
    """Every table model the rule `tables` wrote, as HTML, with its LaTeX beside it, and where
    the cost of each run is (the run times page, `run_times`)."""
    body = ["<h1>Tables</h1>"]
    for path in paths:
        table = Table.from_json(read_json(path, "table model"))
        body += [f"<h2>{html.escape(path.stem)}</h2>", to_html(table),
                 "<details><summary>LaTeX source</summary>",
                 f"<pre>{html.escape(to_latex(table))}</pre></details>"]
    if run_times is not None:
        body.append(f"<p>What each run and each table cell cost (wall and CPU time, peak memory, "
                    f"training steps/s): the report's Run times page, "
                    f"<code>{html.escape(str(run_times))}</code>. Run times differ from run to "
                    f"run, so they stay out of the committed tables.</p>")
    return page("Tables", body)


# ---- run times ----------------------------------------------------------------------------------
def read_benchmark(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except FileNotFoundError as error:
        raise UserError(f"the benchmark file {path} is missing; rerun snakemake") from error
    return rows[-1]   # Snakemake appends a row per repeat; the last is the latest


def run_times_rows(runs: list[Path], benchmarks: list[Path]) -> list[dict]:
    """runs[i] (…/<dataset>-<n>/<row>/seed<k>/run.json) and benchmarks[i] describe the same
    job; the rows are sorted by label budget, table row (algorithm or variant) and seed."""
    if len(runs) != len(benchmarks):
        raise UserError(f"{len(runs)} run.json files but {len(benchmarks)} benchmark files")
    rows = []
    for run_path, benchmark_path in zip(runs, benchmarks, strict=True):
        identity = read_json(run_path.with_name("metrics.json"), "run metrics file")["run"]
        dataset, n_labels = identity["dataset"], identity["n_labels"]
        algorithm, seed = row_name(identity), identity["seed"]
        expected = f"{dataset}-{n_labels}-{algorithm}-seed{seed}.tsv"
        if benchmark_path.name != expected:
            raise UserError(f"{benchmark_path} does not belong to {run_path} (expected a file "
                            f"named {expected})")
        run, bench = read_json(run_path, "run provenance file"), read_benchmark(benchmark_path)
        rows.append({"dataset": dataset, "n_labels": int(n_labels), "algorithm": algorithm,
                     "seed": int(seed), "job_seconds": float(bench["s"]),
                     # the job process's own figures where run.json has them: a warm-started
                     # job's work is outside the process tree Snakemake's benchmark measures
                     "cpu_seconds": float(run.get("cpu_seconds", bench["cpu_time"])),
                     "max_rss_mb": float(run.get("max_rss_mb", bench["max_rss"])),
                     "steps_per_second": run["steps_per_second"], "device": run["device"],
                     "threads": run["threads"],
                     "resumed_from_step": run["resumed_from_step"]})
    return sorted(rows, key=lambda r: (r["n_labels"], r["algorithm"], r["seed"]))


RUN_TIME_COLUMNS = (("n_labels", "labels", "{}"), ("algorithm", "algorithm", "{}"),
                    ("seed", "seed", "{}"), ("job_seconds", "job wall time (s)", "{:.1f}"),
                    ("cpu_seconds", "CPU time (s)", "{:.1f}"), ("max_rss_mb", "peak memory (MB)",
                                                                 "{:.0f}"),
                    ("steps_per_second", "training steps/s", "{:.1f}"), ("device", "device", "{}"),
                    ("resumed_from_step", "resumed from step", "{}"))


def run_times_page(rows: list[dict], labels: dict[str, str] | None = None) -> str:
    """Every job's costs, and each table cell's (`labels`: the rows' names, as in the tables)."""
    labels = labels or {}
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in RUN_TIME_COLUMNS)
    lines = [f"<tr>{header}</tr>"]
    for index, row in enumerate(rows):
        row = {**row, "algorithm": label_of(row["algorithm"], labels)}
        cells = "".join(f"<td>{html.escape(fmt.format(row[key]))}</td>"
                        for key, _, fmt in RUN_TIME_COLUMNS)
        lines.append(f"<tr{MIDRULE if index == 0 else ''}>{cells}</tr>")
    total = sum(row["job_seconds"] for row in rows)
    caption = (f"{len(rows)} training jobs, {total:.0f} s of job wall time in all. Job times "
               "(from Snakemake's benchmark files) include starting Python and loading the data; "
               "steps/s counts the training loop only.")
    return page("Run times", ["<h1>Run times</h1>", *cell_costs(rows, labels),
                              "<h2>Every job</h2>",
                              '<table class="booktabs">',
                              f"<caption>{html.escape(caption)}</caption>", *lines, "</table>"])


def cell_costs(rows: list[dict], labels: dict[str, str] | None = None) -> list[str]:
    """What each table cell cost: its jobs' wall time summed, as CPU-hours (wall time x the
    job's threads) or GPU-hours (wall time on a CUDA device)."""
    costs: dict[tuple[int, str], dict[str, float]] = {}
    for row in rows:
        cost = costs.setdefault((row["n_labels"], row["algorithm"]), {"CPU": 0.0, "GPU": 0.0})
        if row["device"].startswith("cuda"):
            cost["GPU"] += row["job_seconds"] / 3600
        else:
            cost["CPU"] += row["job_seconds"] * row["threads"] / 3600
    lines = ["<h2>Cost per table cell</h2>", '<table class="booktabs">',
             "<caption>Sum over the cell's seeds of the job wall time: CPU-hours (times the "
             "job's threads) and GPU-hours.</caption>",
             "<tr><th>labels</th><th>algorithm</th><th>CPU-hours</th><th>GPU-hours</th></tr>"]
    for index, ((n_labels, algorithm), cost) in enumerate(sorted(costs.items())):
        lines.append(f"<tr{MIDRULE if index == 0 else ''}><td>{n_labels}</td>"
                     f"<td>{html.escape(label_of(algorithm, labels or {}))}</td>"
                     f"<td>{cost['CPU']:.4f}</td><td>{cost['GPU']:.4f}</td></tr>")
    return [*lines, "</table>"]


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--tables", nargs="+", required=True, type=Path,
                        help="table models (.json) written by the rule tables")
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="every run.json")
    parser.add_argument("--benchmarks", nargs="+", required=True, type=Path,
                        help="the train jobs' benchmark files, in the order of --runs")
    parser.add_argument("--tables-html", required=True, type=Path)
    parser.add_argument("--run-times-html", required=True, type=Path)
    parser.add_argument("--labels", type=read_labels, default={},
                        help="each row's name, as JSON {row: label} (the Snakefile gives every "
                             "row's); default: the algorithm's display name")
    args = parser.parse_args(argv)
    write_text(args.tables_html, tables_page(args.tables, args.run_times_html))
    write_text(args.run_times_html, run_times_page(run_times_rows(args.runs, args.benchmarks),
                                                   args.labels))
    print(f"wrote {args.tables_html} and {args.run_times_html}")


if __name__ == "__main__":
    main()
