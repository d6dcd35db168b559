"""Rule `figures`: test error curves per algorithm (mean over seeds, band = min..max), one panel
per label budget, as PDF (fixed metadata: byte-identical across reruns) and PNG."""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from .errors import cli
from .files import atomic_path
from .tables import DISPLAY_NAMES

PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "ssl-repro"}
PNG_METADATA = {"Software": None}


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def run_key(path: Path) -> tuple[str, int, str]:
    """results/<study>/<dataset>-<n_labels>/<algorithm>/seed<k>/<file> -> (dataset, n, algorithm)."""
    algorithm = path.parent.parent.name
    dataset, n_labels = path.parent.parent.parent.name.rsplit("-", 1)
    return dataset, int(n_labels), algorithm


def group_runs(paths: list[Path]) -> dict[tuple[str, int, str], list[list[dict[str, float]]]]:
    groups: dict = defaultdict(list)
    for path in sorted(paths):
        groups[run_key(path)].append(read_csv(path))
    return groups


def save(figure, out_dir: Path, stem: str) -> list[Path]:
    written = []
    for suffix, metadata in ((".pdf", PDF_METADATA), (".png", PNG_METADATA)):
        path = out_dir / f"{stem}{suffix}"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], metadata=metadata, dpi=150, bbox_inches="tight")
        written.append(path)
    return written


def plot_error_curves(groups, model: str, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budgets = sorted({n for _, n, _ in groups})
    figure, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.4), squeeze=False)
    for ax, n_labels in zip(axes[0], budgets):
        for (dataset, n, algorithm), runs in groups.items():
            if n != n_labels:
                continue
            length = min(len(run) for run in runs)
            steps = np.array([run[i]["step"] for i in range(length) for run in runs[:1]])
            errors = np.array([[run[i][f"{model}/error"] for i in range(length)] for run in runs])
            line, = ax.plot(steps, errors.mean(axis=0), label=DISPLAY_NAMES.get(algorithm, algorithm))
            ax.fill_between(steps, errors.min(axis=0), errors.max(axis=0), alpha=0.15,
                            color=line.get_color(), linewidth=0)
        ax.set_title(f"{dataset}, {n_labels} labels")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"test error (%), {model.upper()} model")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    written = save(figure, out_dir, "error_curves")
    plt.close(figure)
    return written


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluations", nargs="+", required=True, type=Path)
    parser.add_argument("--model", default="ema", choices=["ema", "raw"])
    parser.add_argument("--out", required=True, type=Path, help="figures folder")
    args = parser.parse_args(argv)
    written = plot_error_curves(group_runs(args.evaluations), args.model, args.out)
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
