"""What every figure shares: reading a study's per-run CSV files grouped over seeds, and drawing
and saving a figure so that it is byte-identical across reruns on the same results (matplotlib's
defaults, not the user's matplotlibrc; no creation dates or software versions in the files)."""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import atomic_path, read_json
from .naming import data_name, label_of, row_name

PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "ssl-repro"}
PNG_METADATA = {"Software": None}
STYLE = {"svg.hashsalt": "ssl-repro", "pdf.compression": 6, "pdf.fonttype": 42}

# (dataset, n_labels, row) -> each seed's rows of one CSV file; a row is a registered algorithm or
# a variant of one (pipeline/variants.py)
Groups = dict[tuple[str, int, str], list[list[dict[str, float]]]]


@dataclass(frozen=True)
class FigureInputs:
    """What a figure is drawn from: the study's results, and the rows the figure draws (a row
    is a registered algorithm or a variant: `row_algorithms` says which algorithm each runs)."""

    evaluations: Groups              # every run's evaluations.csv, in the study's order
    train_stats: Groups              # train_stats.csv of the algorithms with figures of their own
    runs: tuple[Path, ...]           # every run's metrics.json: its identity and resolved config
    algorithms: tuple[str, ...]      # the rows this figure draws, in the study's order
    model: str = "ema"               # whose test error: the EMA model's or the raw model's
    gammas: tuple[float, ...] = ()   # dash_rho: the gammas drawn beside the study's own
    labels: dict[str, str] = field(default_factory=dict)           # row -> its name (legends)
    row_algorithms: dict[str, str] = field(default_factory=dict)   # row -> its algorithm

    def algorithm_of(self, row: str) -> str:
        return self.row_algorithms.get(row, row)


# ---- reading results ----------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, float]]:
    try:
        with open(path, newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""}
                    for row in csv.DictReader(handle)]
    except FileNotFoundError as error:
        raise UserError(f"the results file {path} is missing; rerun snakemake to recreate "
                        f"it") from error


def run_identity(path: Path) -> dict:
    """The run that wrote `path`: the resolved config in the metrics.json beside it (the train
    job writes both), not a guess from the folder names."""
    return read_json(path.with_name("metrics.json"), "run metrics file")["run"]


def run_key(path: Path) -> tuple[str, int, str]:
    """(dataset, n_labels, row) of the run that wrote `path`."""
    run = run_identity(path)
    return run["dataset"], int(run["n_labels"]), row_name(run)


def row_algorithms(paths: list[Path]) -> dict[str, str]:
    """row -> the registered algorithm it runs, from the identities of the runs that wrote
    `paths`."""
    return {row_name(run): run["algorithm"] for run in map(run_identity, paths)}


def data_names(runs: tuple[Path, ...]) -> dict[str, str]:
    """dataset -> how the titles name it (pipeline/reports/naming.py), from the runs' identities
    (their metrics.json): a user's image folder is named after the study."""
    identities = [read_json(path, "run metrics file")["run"] for path in runs]
    return {run["dataset"]: data_name(run["dataset"], run.get("study", run["dataset"]))
            for run in identities}


def group_runs(paths: list[Path]) -> Groups:
    """Rows of each run's CSV, grouped over seeds by (dataset, n_labels, row), in the order
    given (the Snakefile gives the study's order: the tables' row order)."""
    groups: dict = defaultdict(list)
    for path in paths:
        groups[run_key(path)].append(read_csv(path))
    return dict(groups)


def seed_curves(runs: list[list[dict[str, float]]], column: str):
    """(steps, values[seed, step]) over the steps every seed logged."""
    import numpy as np

    length = min(len(run) for run in runs)
    steps = np.array([runs[0][i]["step"] for i in range(length)])
    values = np.array([[run[i].get(column, math.nan) for i in range(length)] for run in runs])
    return steps, values


def budgets_of(groups: Groups) -> list[int]:
    return sorted({n for _, n, _ in groups})


# ---- drawing ------------------------------------------------------------------------------------
def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcdefaults()
    matplotlib.rcParams.update(STYLE)
    import matplotlib.pyplot as plt
    return plt


def save(figure, out_dir: Path, stem: str) -> list[Path]:
    """Lay out, write <stem>.pdf and <stem>.png atomically with fixed metadata, close."""
    import matplotlib.pyplot as plt

    if figure.get_layout_engine() is None:   # constrained figures (outside legends) lay out themselves
        figure.tight_layout()
    written = []
    for suffix, metadata in ((".pdf", PDF_METADATA), (".png", PNG_METADATA)):
        path = out_dir / f"{stem}{suffix}"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], metadata=metadata, dpi=150, bbox_inches="tight")
        written.append(path)
    plt.close(figure)
    return written


def label(row: str, labels: dict[str, str] | None = None) -> str:
    """A row's name in legends and in the curves' CSV columns (pipeline/reports/naming.py)."""
    return label_of(row, labels or {})


def plot_mean_and_band(ax, steps, values, **style):
    import numpy as np

    line, = ax.plot(steps, np.nanmean(values, axis=0), **style)
    ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.15,
                    color=line.get_color(), linewidth=0)


def line_styles(algorithms: list[str]) -> dict[str, dict]:
    """One colour and dash pattern per algorithm, the same in every panel: 20 colours, then the
    patterns tell the rest apart."""
    import matplotlib

    colours = matplotlib.colormaps["tab10" if len(algorithms) <= 10 else "tab20"].colors
    patterns = ["-", "--", "-.", ":"]
    return {a: {"color": colours[i % len(colours)], "linestyle": patterns[i // len(colours) % 4]}
            for i, a in enumerate(algorithms)}
