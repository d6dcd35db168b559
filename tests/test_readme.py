"""The README's picture of the default study is the committed reports' (reports/digits/)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- default study: reports/digits/table_metrics.json -->", "<!-- end of table -->"


def readme_table() -> dict[str, dict[str, str]]:
    """{budget column: {row label: cell text without bold}} of the README's table."""
    text = (ROOT / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "the README's table markers"
    lines = [line for line in text.split(START)[1].split(END)[0].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table: dict[str, dict[str, str]] = {column: {} for column in header[1:]}
    for line in lines[2:]:
        cells = [cell.strip().replace("**", "") for cell in line.strip("|").split("|")]
        for column, cell in zip(header[1:], cells[1:], strict=True):
            table[column][cells[0]] = cell
    return table


def test_the_readme_table_is_the_committed_default_studys():
    from pipeline.reports.naming import label_of

    metrics = json.loads((ROOT / "reports/digits/table_metrics.json").read_text())
    expected = {budget: {label_of(algorithm, {}): f"{cell['error_mean']:.2f} ± {cell['error_std']:.2f}"
                         for algorithm, cell in cells.items()}
                for budget, cells in metrics.items()}
    assert readme_table() == expected


def test_the_readme_table_bolds_each_columns_lowest_mean():
    text = (ROOT / "README.md").read_text().split(START)[1].split(END)[0]
    table = readme_table()
    for index, column in enumerate(table, start=1):
        lowest = min(float(cell.split(" ± ")[0]) for cell in table[column].values())
        bold = [line.strip("|").split("|")[index].strip() for line in text.splitlines()
                if line.startswith("|")][2:]
        assert {re.sub(r"\*\*(.*)\*\*", r"\1", cell) for cell in bold if cell.startswith("**")} \
            == {cell for cell in table[column].values() if float(cell.split(" ± ")[0]) == lowest}
