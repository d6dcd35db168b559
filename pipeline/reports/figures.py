"""Rule `figures`: the Dash paper's figures for a study, each as PDF (for papers) and PNG.

  error_curves   test error over training per algorithm (mean over seeds, band = min..max),
                 one panel per label budget; always made.
  dash_rho       Dash's threshold rho over training: the values the runs used (train/rho in
                 train_stats.csv) and the schedule for several gamma from the runs' logged
                 rho_hat and their resolved settings (metrics.json); made when the study
                 includes dash.
  pseudo_labels  correct and wrong pseudo-labels selected per step, and the mask rate, FixMatch
                 versus Dash; made when the study includes either.

Outputs are byte-identical across reruns on the same results: matplotlib's defaults (not the
user's matplotlibrc), no creation dates or software versions in the files.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from ..errors import UserError, argument_parser, cli
from ..files import atomic_path, read_json, write_text
from .names import DISPLAY_NAMES

PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "ssl-repro"}
PNG_METADATA = {"Software": None}
STYLE = {"svg.hashsalt": "ssl-repro", "pdf.compression": 6, "pdf.fonttype": 42}

DASH_GAMMAS = (1.1, 1.27, 1.5)                 # the schedules drawn beside the study's own gamma
PSEUDO_LABEL_ALGORITHMS = ("fixmatch", "dash")  # the comparison of the Dash paper


def figures_for(algorithms: list[str]) -> list[str]:
    """The figures a study with these algorithms gets (the Snakefile declares them as outputs)."""
    names = ["error_curves"]
    if "dash" in algorithms:
        names.append("dash_rho")
    if any(name in algorithms for name in PSEUDO_LABEL_ALGORITHMS):
        names.append("pseudo_labels")
    return names


def stats_algorithms(algorithms: list[str]) -> list[str]:
    """The algorithms whose train_stats.csv the figures read."""
    return [name for name in algorithms if name in PSEUDO_LABEL_ALGORITHMS]


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
    """(dataset, n_labels, algorithm) of the run that wrote `path`."""
    run = run_identity(path)
    return run["dataset"], int(run["n_labels"]), run["algorithm"]


def group_runs(paths: list[Path]) -> dict[tuple[str, int, str], list[list[dict[str, float]]]]:
    """Rows of each run's CSV, grouped over seeds by (dataset, n_labels, algorithm), in the order
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


# ---- Dash's schedule ----------------------------------------------------------------------------
def dash_rho(settings: dict, step: int, rho_hat: float, gamma: float, rho_min: float) -> float:
    """rho at (0-based) training step `step`, from the library's schedule functions; inf while
    no threshold applies (warm-up)."""
    from semisup.algorithms.masking import dash_rho_official, dash_rho_usb

    if settings["variant"] == "official":
        return float(dash_rho_official(step // settings["steps_per_epoch"], rho_hat, gamma,
                                       rho_min, settings["warmup_epochs"]))
    if step < settings["warmup_steps"]:
        return math.inf
    return float(dash_rho_usb(step, rho_hat, gamma, settings["C"], rho_min,
                              settings["warmup_steps"], settings["steps_per_epoch"]))


def schedule_steps(settings: dict, total_steps: int) -> list[int]:
    """The steps where rho can change (epoch starts, the end of a usb warm-up), and the last:
    enough to draw the piecewise-constant schedule of a 2^20-step run quickly."""
    epoch = settings["steps_per_epoch"]
    starts = set(range(0, total_steps, epoch)) | {total_steps - 1}
    if settings["variant"] == "usb":
        starts |= set(range(settings["warmup_steps"], total_steps, epoch))
    return sorted(step for step in starts if 0 <= step < total_steps)


def logged_rho_hat(rows: list[dict[str, float]]) -> float:
    """rho_hat of one run as it logged it (train/rho_hat: NaN until defined, then constant)."""
    values = [row.get("train/rho_hat", math.nan) for row in rows]
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        raise UserError("dash_rho figure: a dash run's train_stats.csv has no train/rho_hat after "
                        "its warm-up; train longer than the warm-up, or rerun it with this code "
                        "(older runs did not log rho_hat)")
    return finite[-1]


def dash_settings(metrics_paths: list[Path]) -> dict:
    """The resolved Dash hyperparameters the study's dash runs used (their metrics.json)."""
    settings = [run_identity(path)["algorithm_params"] for path in metrics_paths]
    if not settings:
        raise UserError("dash_rho figure: no metrics.json of a dash run was given")
    if any(other != settings[0] for other in settings[1:]):
        raise UserError("dash_rho figure: the dash runs used different hyperparameters; draw "
                        "one study at a time")
    return settings[0]


def write_curves(groups, model: str, out_dir: Path) -> list[Path]:
    """Each (label budget, algorithm): the test error at every evaluation, mean over seeds, as
    <n_labels>-labels/<algorithm>.csv with columns step, error (for `dvc plots show/diff`)."""
    import numpy as np

    written = []
    for (_, n_labels, algorithm), runs in groups.items():
        steps, errors = seed_curves(runs, f"{model}/error")
        path = out_dir / f"{n_labels}-labels" / f"{algorithm}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [f"{int(step)},{error:.4f}" for step, error in zip(steps, np.nanmean(errors, 0),
                                                                strict=True)]
        write_text(path, "\n".join(["step,error", *rows, ""]))
        written.append(path)
    return written


# ---- plotting -----------------------------------------------------------------------------------
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


def budgets_of(groups) -> list[int]:
    return sorted({n for _, n, _ in groups})


def label(algorithm: str) -> str:
    return DISPLAY_NAMES.get(algorithm, algorithm)


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


def plot_error_curves(groups, model: str, out_dir: Path) -> list[Path]:
    """One panel per label budget, one line per algorithm (mean over seeds, band = min..max),
    and one legend for all panels, in the tables' row order."""
    plt = pyplot()
    budgets = budgets_of(groups)
    algorithms = list(dict.fromkeys(algorithm for _, _, algorithm in groups))
    styles = line_styles(algorithms)
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False,
                                sharey=True, layout="constrained")
    for ax, n_labels in zip(axes[0], budgets, strict=True):
        cells = {key: runs for key, runs in groups.items() if key[1] == n_labels}
        for (_, _, algorithm), runs in cells.items():
            steps, errors = seed_curves(runs, f"{model}/error")
            plot_mean_and_band(ax, steps, errors, label=label(algorithm), linewidth=1.2,
                               **styles[algorithm])
        ax.set_title(f"{', '.join(sorted({dataset for dataset, _, _ in cells}))}, {n_labels} labels")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test error (%), {model.upper()} model")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7,
                  ncols=1 if len(algorithms) <= 12 else 2)
    return save(figure, out_dir, "error_curves")


def plot_dash_rho(groups, dash_runs: list[Path], gammas: tuple[float, ...],
                  out_dir: Path) -> list[Path]:
    """Per label budget: each seed's logged rho (markers) and the schedule for several gamma,
    started from the seeds' mean logged rho_hat (lines); rho_min dashed."""
    import numpy as np

    plt = pyplot()
    dash_groups = {key: runs for key, runs in groups.items() if key[2] == "dash"}
    if not dash_groups:
        raise UserError("dash_rho figure: no train_stats.csv of a dash run was given")
    settings = dash_settings(dash_runs)
    budgets = budgets_of(dash_groups)
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.4), squeeze=False)
    all_gammas = sorted(set(gammas) | {settings["gamma"]})
    for ax, n_labels in zip(axes[0], budgets, strict=True):
        (dataset, _, _), runs = next((k, r) for k, r in dash_groups.items() if k[1] == n_labels)
        rho_hat = float(np.mean([logged_rho_hat(run) for run in runs]))
        steps = np.array(schedule_steps(settings, int(max(run[-1]["step"] for run in runs))))
        for gamma in all_gammas:
            schedule = [dash_rho(settings, int(s), rho_hat, gamma, settings["rho_min"])
                        for s in steps]
            ours = " (this study)" if gamma == settings["gamma"] else ""
            ax.step(steps + 1, np.where(np.isfinite(schedule), schedule, np.nan), where="post",
                    linewidth=2.0 if ours else 1.2, label=f"$\\gamma$ = {gamma:g}{ours}")
        threshold_from = next((s for s in steps if math.isfinite(
            dash_rho(settings, int(s), rho_hat, settings["gamma"], settings["rho_min"]))), None)
        if threshold_from:
            ax.axvspan(0, threshold_from + 1, color="gray", alpha=0.12, linewidth=0,
                       label="warm-up (no threshold)")
        for index, run in enumerate(runs):
            logged = np.array([row.get("train/rho", math.nan) for row in run])
            ax.plot([row["step"] for row in run], np.where(np.isfinite(logged), logged, np.nan),
                    "o", markersize=3, color="black", alpha=0.6,
                    label="logged (each seed)" if index == 0 else None)
        ax.axhline(settings["rho_min"], color="gray", linestyle="--", linewidth=1,
                   label=r"$\rho_{min}$")
        ax.set_title(f"{dataset}, {n_labels} labels; Dash ({settings['variant']}), "
                     f"$\\hat\\rho$ = {rho_hat:.3g}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(r"threshold $\rho$ (loss)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    return save(figure, out_dir, "dash_rho")


PSEUDO_LABEL_PANELS = (  # column, panel title, y-axis label
    ("train/n_selected_correct", "correct pseudo-labels selected", "pseudo-labels per step"),
    ("train/n_selected_wrong", "wrong pseudo-labels selected", "pseudo-labels per step"),
    ("train/mask_rate", "mask rate", "fraction of unlabeled selected"))


def plot_pseudo_labels(groups, out_dir: Path) -> list[Path]:
    """Rows: label budgets; columns: correct, wrong (counts per step of mu*B unlabeled samples),
    mask rate; one line per algorithm (mean over seeds, band = min..max)."""
    plt = pyplot()
    chosen = {key: runs for key, runs in groups.items() if key[2] in PSEUDO_LABEL_ALGORITHMS}
    if not chosen:
        raise UserError("pseudo_labels figure: no train_stats.csv of a fixmatch or dash run was "
                        "given")
    budgets = budgets_of(chosen)
    figure, axes = plt.subplots(len(budgets), len(PSEUDO_LABEL_PANELS),
                                figsize=(4.0 * len(PSEUDO_LABEL_PANELS), 3.2 * len(budgets)),
                                squeeze=False, layout="constrained")
    for row_axes, n_labels in zip(axes, budgets, strict=True):
        for ax, (column, title, ylabel) in zip(row_axes, PSEUDO_LABEL_PANELS, strict=True):
            for algorithm in PSEUDO_LABEL_ALGORITHMS:
                key = next((k for k in chosen if k[1] == n_labels and k[2] == algorithm), None)
                if key is not None:
                    steps, values = seed_curves(chosen[key], column)
                    plot_mean_and_band(ax, steps, values, label=label(algorithm))
            ax.set_title(f"{title}, {n_labels} labels", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    return save(figure, out_dir, "pseudo_labels")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--evaluations", nargs="+", required=True, type=Path,
                        help="every run's evaluations.csv")
    parser.add_argument("--train-stats", nargs="*", default=[], type=Path,
                        help="train_stats.csv of the fixmatch and dash runs")
    parser.add_argument("--figures", nargs="+", default=["error_curves"],
                        choices=["error_curves", "dash_rho", "pseudo_labels"])
    parser.add_argument("--dash-runs", nargs="*", default=[], type=Path,
                        help="metrics.json of the dash runs (their resolved hyperparameters)")
    parser.add_argument("--gammas", nargs="+", type=float, default=list(DASH_GAMMAS),
                        help="gamma values whose rho schedule dash_rho draws")
    parser.add_argument("--model", default="ema", choices=["ema", "raw"])
    parser.add_argument("--out", required=True, type=Path, help="figures folder")
    parser.add_argument("--curves", type=Path, help="folder for the error curves as CSV, "
                        "<n_labels>-labels/<algorithm>.csv (what `dvc plots` draws)")
    args = parser.parse_args(argv)
    written: list[Path] = []
    evaluations = group_runs(args.evaluations)
    if "error_curves" in args.figures:
        written += plot_error_curves(evaluations, args.model, args.out)
    if args.curves:
        written += write_curves(evaluations, args.model, args.curves)
    stats = group_runs(args.train_stats) if {"dash_rho", "pseudo_labels"} & set(args.figures) \
        else {}
    if "dash_rho" in args.figures:
        written += plot_dash_rho(stats, args.dash_runs, tuple(args.gammas), args.out)
    if "pseudo_labels" in args.figures:
        written += plot_pseudo_labels(stats, args.out)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
