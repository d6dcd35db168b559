"""The figures of the Dash paper (Xu et al., ICML 2021), beside the error curves every study gets:

  dash_rho       Dash's threshold rho over training: the values the runs used (train/rho in
                 train_stats.csv) and the schedule for several gamma from the runs' logged
                 rho_hat and their resolved settings (metrics.json).
  pseudo_labels  correct and wrong pseudo-labels selected per step, and the mask rate: the paper's
                 FixMatch-versus-Dash comparison, of the algorithms that have this figure
                 (pipeline/reports/figures.py; the algorithms' cards list them).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError
from .naming import row_name
from .plotting import (FigureInputs, budgets_of, data_names, label, plot_mean_and_band, pyplot,
                       run_identity, save, seed_curves)

DASH = "dash"                        # the algorithm whose threshold schedule dash_rho draws
DASH_GAMMAS = (1.1, 1.27, 1.5)       # the schedules drawn beside the study's own gamma


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


def dash_settings(metrics_paths: list[Path], row: str = DASH) -> dict:
    """The resolved Dash hyperparameters the runs of `row` (Dash's own row, or a variant of Dash)
    used (their metrics.json; the other runs given are left out)."""
    identities = [run_identity(path) for path in metrics_paths]
    settings = [run["algorithm_params"] for run in identities
                if run["algorithm"] == DASH and row_name(run) == row]
    if not settings:
        raise UserError("dash_rho figure: no metrics.json of a dash run was given")
    if any(other != settings[0] for other in settings[1:]):
        raise UserError("dash_rho figure: the dash runs used different hyperparameters; draw "
                        "one study at a time")
    return settings[0]


# ---- the figures --------------------------------------------------------------------------------
def plot_dash_rho(inputs: FigureInputs, out_dir: Path) -> list[Path]:
    """Per label budget: each seed's logged rho (markers) and the schedule for several gamma,
    started from the seeds' mean logged rho_hat (lines); rho_min dashed. Of the study's first
    row that runs Dash (Dash's own row, else a variant of it, e.g. Dash (CTA))."""
    plt = pyplot()
    rows = [row for row in inputs.algorithms if inputs.algorithm_of(row) == DASH]
    dash_groups = {key: runs for key, runs in inputs.train_stats.items()
                   if rows and key[2] == rows[0]}
    if not dash_groups:
        raise UserError("dash_rho figure: no train_stats.csv of a dash run was given")
    settings = dash_settings(list(inputs.runs), rows[0])
    budgets = budgets_of(dash_groups)
    names = data_names(inputs.runs)
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.4), squeeze=False)
    for ax, n_labels in zip(axes[0], budgets, strict=True):
        key = next(key for key in dash_groups if key[1] == n_labels)
        plot_rho_panel(ax, names.get(key[0], key[0]), n_labels, dash_groups[key], settings,
                       inputs.gammas)
    axes[0][-1].legend(fontsize=7, loc="best")
    return save(figure, out_dir, "dash_rho")


def plot_rho_panel(ax, dataset: str, n_labels: int, runs: list[list[dict[str, float]]],
                   settings: dict, gammas: tuple[float, ...]) -> None:
    """One label budget of dash_rho: the schedules (lines), the warm-up (shaded), each seed's
    logged rho (markers) and rho_min (dashed)."""
    import numpy as np

    rho_hat = float(np.mean([logged_rho_hat(run) for run in runs]))
    steps = np.array(schedule_steps(settings, int(max(run[-1]["step"] for run in runs))))
    for gamma in sorted(set(gammas) | {settings["gamma"]}):
        schedule = [dash_rho(settings, int(s), rho_hat, gamma, settings["rho_min"]) for s in steps]
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


PSEUDO_LABEL_PANELS = (  # column, panel title, y-axis label
    ("train/n_selected_correct", "correct pseudo-labels selected", "pseudo-labels per step"),
    ("train/n_selected_wrong", "wrong pseudo-labels selected", "pseudo-labels per step"),
    ("train/mask_rate", "mask rate", "fraction of unlabeled selected"))


def plot_pseudo_labels(inputs: FigureInputs, out_dir: Path) -> list[Path]:
    """Rows: label budgets; columns: correct, wrong (counts per step of mu*B unlabeled samples),
    mask rate; one line per algorithm of `inputs.algorithms`, in that order (mean over seeds,
    band = min..max)."""
    plt = pyplot()
    chosen = {key: runs for key, runs in inputs.train_stats.items()
              if key[2] in inputs.algorithms}
    if not chosen:
        raise UserError(f"pseudo_labels figure: no train_stats.csv of a "
                        f"{' or '.join(inputs.algorithms)} run was given")
    budgets = budgets_of(chosen)
    figure, axes = plt.subplots(len(budgets), len(PSEUDO_LABEL_PANELS),
                                figsize=(4.0 * len(PSEUDO_LABEL_PANELS), 3.2 * len(budgets)),
                                squeeze=False, layout="constrained")
    for row_axes, n_labels in zip(axes, budgets, strict=True):
        for ax, (column, title, ylabel) in zip(row_axes, PSEUDO_LABEL_PANELS, strict=True):
            for algorithm in inputs.algorithms:
                key = next((k for k in chosen if k[1] == n_labels and k[2] == algorithm), None)
                if key is not None:
                    steps, values = seed_curves(chosen[key], column)
                    plot_mean_and_band(ax, steps, values, label=label(algorithm, inputs.labels))
            ax.set_title(f"{title}, {n_labels} labels", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    return save(figure, out_dir, "pseudo_labels")
