"""The `selection` figure: how each algorithm that selects pseudo-labels selects them over training,
for any number of algorithms (every algorithm whose card lists the figure).

Rows: label budgets. Columns: the mask rate (the fraction of the unlabeled batch selected; a
soft weight counts as selected from 0.5), the precision of the selected pseudo-labels (correct /
selected, from the true labels, which training never reads), and the wrong pseudo-labels selected
per step. One line per algorithm (mean over seeds, band = min..max), in the study's order, with
the error curves' colours and dash patterns (twenty colours, then patterns) and one legend beside
the panels.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .plotting import (FigureInputs, budgets_of, label, line_styles, plot_mean_and_band, pyplot,
                       save, seed_curves)

PANELS = (  # what, panel title, y-axis label
    ("mask_rate", "mask rate", "fraction of the unlabeled batch"),
    ("precision", "precision of the selected pseudo-labels", "correct / selected"),
    ("wrong", "wrong pseudo-labels selected", "per step"))


def panel_values(runs, what: str):
    """(steps, values[seed, step]) of one panel's quantity, from the runs' train_stats.csv."""
    import numpy as np

    if what == "mask_rate":
        return seed_curves(runs, "train/mask_rate")
    steps, wrong = seed_curves(runs, "train/n_selected_wrong")
    if what == "wrong":
        return steps, wrong
    _, correct = seed_curves(runs, "train/n_selected_correct")
    selected = correct + wrong
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, np.where(selected > 0, correct / selected, np.nan)


def plot_selection(inputs: FigureInputs, out_dir: Path) -> list[Path]:
    plt = pyplot()
    chosen = {key: runs for key, runs in inputs.train_stats.items() if key[2] in inputs.algorithms}
    if not chosen:
        raise UserError(f"selection figure: no train_stats.csv of a "
                        f"{' or '.join(inputs.algorithms)} run was given")
    budgets, styles = budgets_of(chosen), line_styles(list(inputs.algorithms))
    figure, axes = plt.subplots(len(budgets), len(PANELS), figsize=(4.0 * len(PANELS),
                                                                    3.0 * len(budgets)),
                                squeeze=False, sharex=True, layout="constrained")
    for row_axes, n_labels in zip(axes, budgets, strict=True):
        for ax, (what, title, ylabel) in zip(row_axes, PANELS, strict=True):
            for algorithm in inputs.algorithms:
                key = next((k for k in chosen if k[1] == n_labels and k[2] == algorithm), None)
                if key is not None:
                    steps, values = panel_values(chosen[key], what)
                    plot_mean_and_band(ax, steps, values, label=label(algorithm, inputs.labels),
                                       linewidth=1.1, **styles[algorithm])
            ax.set_title(f"{title}, {n_labels} labels", fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7,
                  ncols=1 if len(labels) <= 12 else 2)
    return save(figure, out_dir, "selection")
