"""Rule `report_pages`: the HTML pages that `snakemake --report` shows beside the figures.

  tables.html     every LaTeX table of the rule `tables`, rendered as an HTML table (booktabs
                  rules, bold, +-), with its caption and its LaTeX source
  run_times.html  one row per training job: wall time and CPU time and peak memory from the
                  Snakemake `benchmark:` file, steps per second and device from the run's run.json

Plain HTML with inline CSS, so the pages stay readable inside the self-contained report.
"""
from __future__ import annotations

import argparse
import csv
import html
import re
from pathlib import Path

from .errors import UserError, cli
from .files import read_json, write_text
from .names import DISPLAY_NAMES

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

LATEX_REPLACEMENTS = ((r"$\pm$", "±"), (r"\pm", "±"), (r"$-$", "−"), (r"\Delta", "Δ"),
                      (r"\%", "%"), ("--", "–"), (r"\&", "&"), ("~", " "), (r"\_", "_"),
                      (r"\textasciitilde{}", "~"), (r"\textbackslash{}", "\\"), ("$", ""))
GROUPS = re.compile(r"\\(textbf|emph|textit|underline)\s*\{|\^\{")
TAGS = {"textbf": "b", "emph": "i", "textit": "i", "underline": "u", None: "sup"}


MIDRULE = ' class="midrule"'


def page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", STYLE, "</head><body>", *body,
                      "</body></html>", ""])


# ---- LaTeX tables -------------------------------------------------------------------------------
def braced(text: str, start: int) -> tuple[str, int]:
    """The content of the {...} group opening at text[start], and the index after it."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1:index], index + 1
    raise UserError(f"unbalanced braces in a LaTeX table near: {text[start:start + 60]!r}")


def latex_inline(text: str) -> str:
    """A table cell, caption or note as escaped HTML: \\textbf -> <b>, \\emph -> <i>,
    ^{x} -> <sup>, the usual symbols; other commands are dropped."""
    out, index = [], 0
    while index < len(text):
        match = GROUPS.search(text, index)
        if not match:
            out.append(plain(text[index:]))
            break
        out.append(plain(text[index:match.start()]))
        inner, index = braced(text, match.end() - 1)
        tag = TAGS[match.group(1)]
        out.append(f"<{tag}>{latex_inline(inner)}</{tag}>")
    return "".join(out)


def plain(text: str) -> str:
    for latex, replacement in LATEX_REPLACEMENTS:
        text = text.replace(latex, replacement)
    text = re.sub(r"\\(begin|end)\{[^}]*\}(\{[^}]*\})?", "", text)   # environments
    text = re.sub(r"\\[a-zA-Z]+\*?(\[[^\]]*\])?", "", text)         # other commands
    return html.escape(text.replace("{", "").replace("}", "").replace("$", ""))


def table_cell(cell: str, header: bool) -> str:
    tag = "th" if header else "td"
    match = re.fullmatch(r"\s*\\multicolumn\{(\d+)\}\{[^}]*\}\{(.*)\}\s*", cell, re.S)
    if match:
        return f'<{tag} colspan="{match.group(1)}">{latex_inline(match.group(2))}</{tag}>'
    return f"<{tag}>{latex_inline(cell)}</{tag}>"


def latex_table_to_html(tex: str) -> str:
    """One booktabs table (caption, \\toprule/\\midrule/\\bottomrule, rows split by \\\\ and &)
    as an HTML table; rows before the first \\midrule are the header."""
    caption = ""
    at = tex.find(r"\caption{")
    if at >= 0:
        caption, _ = braced(tex, at + len(r"\caption"))
    begin, end = tex.find(r"\begin{tabular}"), tex.find(r"\end{tabular}")
    if begin < 0 or end < begin:
        raise UserError("a table file holds no tabular environment; rerun the rule `tables`")
    _, body_start = braced(tex, begin + len(r"\begin{tabular}"))   # skip the column spec
    rows, midrule, in_header = [], False, True
    for chunk in re.split(r"\\\\(?:\[[^\]]*\])?", tex[body_start:end]):
        for line in chunk.strip().splitlines():
            line = line.strip()
            if line.startswith(r"\midrule"):
                midrule, in_header = True, False
            elif not line or line.startswith(("%", r"\toprule", r"\bottomrule", r"\cmidrule",
                                              r"\addlinespace", r"\hline")):
                continue
            else:
                cells = "".join(table_cell(cell, in_header)
                                for cell in re.split(r"(?<!\\)&", line))
                rows.append(f"<tr{MIDRULE if midrule else ''}>{cells}</tr>")
                midrule = False
    notes = [latex_inline(note).strip() for note in
             re.split(r"\\\\", tex[end:].split(r"\end{table")[0].replace(r"\end{tabular}", ""))]
    return "\n".join([f'<table class="booktabs"><caption>{latex_inline(caption)}</caption>',
                      *rows, "</table>", *(f"<p><small>{n}</small></p>" for n in notes if n)])


def tables_page(paths: list[Path]) -> str:
    body = ["<h1>Tables</h1>"]
    for path in paths:
        tex = path.read_text()
        body += [f"<h2>{html.escape(path.name)}</h2>", latex_table_to_html(tex),
                 "<details><summary>LaTeX source</summary>",
                 f"<pre>{html.escape(tex)}</pre></details>"]
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
    """runs[i] (…/<dataset>-<n>/<algorithm>/seed<k>/run.json) and benchmarks[i] describe the same
    job; the rows are sorted by label budget, algorithm and seed."""
    if len(runs) != len(benchmarks):
        raise UserError(f"{len(runs)} run.json files but {len(benchmarks)} benchmark files")
    rows = []
    for run_path, benchmark_path in zip(runs, benchmarks, strict=True):
        seed_dir = run_path.parent
        dataset, n_labels = seed_dir.parent.parent.name.rsplit("-", 1)
        algorithm, seed = seed_dir.parent.name, seed_dir.name.removeprefix("seed")
        expected = f"{dataset}-{n_labels}-{algorithm}-seed{seed}.tsv"
        if benchmark_path.name != expected:
            raise UserError(f"{benchmark_path} does not belong to {run_path} (expected a file "
                            f"named {expected})")
        run, bench = read_json(run_path, "run provenance file"), read_benchmark(benchmark_path)
        rows.append({"dataset": dataset, "n_labels": int(n_labels), "algorithm": algorithm,
                     "seed": int(seed), "job_seconds": float(bench["s"]),
                     "cpu_seconds": float(bench["cpu_time"]), "max_rss_mb": float(bench["max_rss"]),
                     "steps_per_second": run["steps_per_second"], "device": run["device"],
                     "resumed_from_step": run["resumed_from_step"]})
    return sorted(rows, key=lambda r: (r["n_labels"], r["algorithm"], r["seed"]))


RUN_TIME_COLUMNS = (("n_labels", "labels", "{}"), ("algorithm", "algorithm", "{}"),
                    ("seed", "seed", "{}"), ("job_seconds", "job wall time (s)", "{:.1f}"),
                    ("cpu_seconds", "CPU time (s)", "{:.1f}"), ("max_rss_mb", "peak memory (MB)",
                                                                 "{:.0f}"),
                    ("steps_per_second", "training steps/s", "{:.1f}"), ("device", "device", "{}"),
                    ("resumed_from_step", "resumed from step", "{}"))


def run_times_page(rows: list[dict]) -> str:
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in RUN_TIME_COLUMNS)
    lines = [f"<tr>{header}</tr>"]
    for index, row in enumerate(rows):
        row = {**row, "algorithm": DISPLAY_NAMES.get(row["algorithm"], row["algorithm"])}
        cells = "".join(f"<td>{html.escape(fmt.format(row[key]))}</td>"
                        for key, _, fmt in RUN_TIME_COLUMNS)
        lines.append(f"<tr{MIDRULE if index == 0 else ''}>{cells}</tr>")
    total = sum(row["job_seconds"] for row in rows)
    caption = (f"{len(rows)} training jobs, {total:.0f} s of job wall time in all. Job times "
               "(from Snakemake's benchmark files) include starting Python and loading the data; "
               "steps/s counts the training loop only.")
    return page("Run times", ["<h1>Run times</h1>", '<table class="booktabs">',
                              f"<caption>{html.escape(caption)}</caption>", *lines, "</table>"])


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", required=True, type=Path, help="LaTeX tables")
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="every run.json")
    parser.add_argument("--benchmarks", nargs="+", required=True, type=Path,
                        help="the train jobs' benchmark files, in the order of --runs")
    parser.add_argument("--tables-html", required=True, type=Path)
    parser.add_argument("--run-times-html", required=True, type=Path)
    args = parser.parse_args(argv)
    write_text(args.tables_html, tables_page(args.tables))
    write_text(args.run_times_html, run_times_page(run_times_rows(args.runs, args.benchmarks)))
    print(f"wrote {args.tables_html} and {args.run_times_html}")


if __name__ == "__main__":
    main()
