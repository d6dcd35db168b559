"""Rule `figures`: a study's figures, each as PDF (for papers) and PNG, and its error curves as CSV.

  error_curves   test error over training per algorithm (mean over seeds, band = min..max),
                 one panel per label budget; every study gets it.
  dash_rho, pseudo_labels
                 the Dash paper's figures (pipeline/reports/dash_paper.py)
  selection      how every algorithm that selects pseudo-labels selects them: mask rate,
                 precision, wrong selections (pipeline/reports/selection.py)
A study gets the figures that its algorithms' cards list (`figures` in each algorithm's module,
read by semisup.catalog). A row of a study is a registered algorithm or a variant of one
(pipeline/variants.py): a variant gets its algorithm's figures, and its label (--labels) in the
legends.

Each figure picks the runs it draws by their identity (the metrics.json beside each CSV file).
Outputs are byte-identical across reruns on the same results (pipeline/reports/plotting.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from semisup.catalog import algorithm_cards

from ..errors import UserError, argument_parser, cli
from ..files import write_text
from . import dash_paper, selection
from .naming import read_labels
from .plotting import (FigureInputs, Groups, budgets_of, data_names, group_runs, label,
                       line_styles, plot_mean_and_band, pyplot, row_algorithms, save, seed_curves)

COMMON_FIGURES = ("error_curves",)   # every study's, of every algorithm


def write_curves(groups: Groups, model: str, out_dir: Path,
                 labels: dict[str, str] | None = None) -> list[Path]:
    """Per label budget, every row's test error at each evaluation (mean over seeds), as
    <n_labels>-labels.csv: a column step, then one per row (its label, in the study's order),
    empty where it did not evaluate at that step. `dvc plots show` draws one chart per label
    budget from it, a line per row (dvc.yaml)."""
    import csv
    import io

    import numpy as np

    written = []
    for n_labels in budgets_of(groups):
        curves = {}
        for (_, budget, algorithm), runs in groups.items():
            if budget == n_labels:
                steps, errors = seed_curves(runs, f"{model}/error")
                curves[label(algorithm, labels)] = dict(zip(map(int, steps), np.nanmean(errors, 0),
                                                    strict=True))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["step", *curves])
        for step in sorted(set().union(*curves.values())):
            writer.writerow([step, *(f"{curve[step]:.4f}" if step in curve else ""
                                     for curve in curves.values())])
        path = out_dir / f"{n_labels}-labels.csv"
        write_text(path, text.getvalue())
        written.append(path)
    return written


def plot_error_curves(inputs: FigureInputs, out_dir: Path) -> list[Path]:
    """One panel per label budget, one line per algorithm (mean over seeds, band = min..max),
    and one legend for all panels, in the tables' row order."""
    plt = pyplot()
    groups, model = inputs.evaluations, inputs.model
    budgets = budgets_of(groups)
    algorithms = list(dict.fromkeys(algorithm for _, _, algorithm in groups))
    styles = line_styles(algorithms)
    names = data_names(inputs.runs)
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.6), squeeze=False,
                                sharey=True, layout="constrained")
    for ax, n_labels in zip(axes[0], budgets, strict=True):
        cells = {key: runs for key, runs in groups.items() if key[1] == n_labels}
        for (_, _, algorithm), runs in cells.items():
            steps, errors = seed_curves(runs, f"{model}/error")
            plot_mean_and_band(ax, steps, errors, label=label(algorithm, inputs.labels),
                               linewidth=1.2, **styles[algorithm])
        data = sorted({names.get(dataset, dataset) for dataset, _, _ in cells})
        ax.set_title(f"{', '.join(data)}, {n_labels} labels")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test error (%), {model.upper()} model")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7,
                  ncols=1 if len(algorithms) <= 12 else 2)
    return save(figure, out_dir, "error_curves")


# Every figure by name, in the order a study lists them: (inputs, figures folder) -> files written.
FIGURES: dict[str, Callable[[FigureInputs, Path], list[Path]]] = {
    "error_curves": plot_error_curves,
    "dash_rho": dash_paper.plot_dash_rho,
    "pseudo_labels": dash_paper.plot_pseudo_labels,
    "selection": selection.plot_selection,
}


def own_figures(algorithm: str) -> tuple[str, ...]:
    """The figures of an algorithm's own, beyond the error curves (each reads its runs'
    train_stats.csv): its card's `figures` (semisup.catalog). They decide which figures a study
    gets, and which algorithms each of them draws."""
    card = algorithm_cards().get(algorithm)
    return card.figures if card else ()


def figure_algorithms(figure: str, rows: list[str],
                      algorithm_of: dict[str, str] | None = None) -> list[str]:
    """The rows of `rows` (in their order) that `figure` draws: all of them for a common figure,
    else those whose algorithm's card lists it (`algorithm_of`: a variant's algorithm)."""
    if figure in COMMON_FIGURES:
        return list(rows)
    algorithm_of = algorithm_of or {}
    return [row for row in rows if figure in own_figures(algorithm_of.get(row, row))]


def figures_for(rows: list[str], algorithm_of: dict[str, str] | None = None) -> list[str]:
    """The figures a study with these rows gets (the Snakefile declares them as outputs)."""
    return [*COMMON_FIGURES, *(name for name in FIGURES if name not in COMMON_FIGURES
                               and figure_algorithms(name, rows, algorithm_of))]


def stats_algorithms(rows: list[str], algorithm_of: dict[str, str] | None = None) -> list[str]:
    """The rows whose train_stats.csv the figures read: those whose algorithm has figures of its
    own."""
    algorithm_of = algorithm_of or {}
    return [row for row in rows if own_figures(algorithm_of.get(row, row))]


def draw(figures: list[str], inputs: FigureInputs, out_dir: Path) -> list[Path]:
    """Each of `figures`, of the algorithms it draws among `inputs.algorithms` (the study's)."""
    written = []
    for name in (name for name in FIGURES if name in figures):
        drawn = figure_algorithms(name, list(inputs.algorithms), inputs.row_algorithms)
        if not drawn:
            having = [algorithm for algorithm in algorithm_cards() if name in own_figures(algorithm)]
            raise UserError(f"{name} figure: no run given is of an algorithm that has it "
                            f"({', '.join(having)}); give their evaluations.csv and "
                            f"train_stats.csv, or leave {name} out of --figures")
        written += FIGURES[name](replace(inputs, algorithms=tuple(drawn)), out_dir)
    return written


def parse_arguments(argv: list[str] | None):
    parser = argument_parser(__doc__)
    parser.add_argument("--evaluations", nargs="+", required=True, type=Path,
                        help="every run's evaluations.csv, in the study's order")
    parser.add_argument("--train-stats", nargs="*", default=[], type=Path,
                        help="train_stats.csv of the runs of the algorithms with figures of their "
                             "own (their cards' `figures`)")
    parser.add_argument("--figures", nargs="+", default=["error_curves"], choices=list(FIGURES))
    parser.add_argument("--runs", nargs="*", default=[], type=Path,
                        help="every run's metrics.json (its identity and resolved config)")
    parser.add_argument("--gammas", nargs="+", type=float, default=list(dash_paper.DASH_GAMMAS),
                        help="gamma values whose rho schedule dash_rho draws")
    parser.add_argument("--model", default="ema", choices=["ema", "raw"])
    parser.add_argument("--labels", type=read_labels, default={},
                        help="each row's name in the legends and curves, as JSON {row: label} "
                             "(the Snakefile gives every row's); default: the algorithm's "
                             "display name")
    parser.add_argument("--out", required=True, type=Path, help="figures folder")
    parser.add_argument("--curves", type=Path, help="folder for the error curves as CSV, "
                        "<n_labels>-labels.csv (what `dvc plots` draws)")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    evaluations = group_runs(args.evaluations)
    # every figure beyond the common ones reads train_stats.csv
    train_stats = group_runs(args.train_stats) if set(args.figures) - set(COMMON_FIGURES) else {}
    study_algorithms = dict.fromkeys(key[2] for key in [*evaluations, *train_stats])
    inputs = FigureInputs(evaluations=evaluations, train_stats=train_stats, runs=tuple(args.runs),
                          algorithms=tuple(study_algorithms), model=args.model,
                          gammas=tuple(args.gammas), labels=args.labels,
                          row_algorithms=row_algorithms(args.evaluations))
    written = draw(args.figures, inputs, args.out)
    if args.curves:
        written += write_curves(evaluations, args.model, args.curves, args.labels)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
