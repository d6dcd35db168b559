"""Does a finished study show what its paper shows, or only how fast each method converges?
Per label budget and algorithm (mean over seeds), from each run's evaluations.csv and
train_stats.csv:

  err@80%   the EMA model's test error at 80% of training
  err end   at the end
  gain      err@80% - err end: what the last fifth of training still improved (issue 29 asks for
            a default study where it is under 1 point: the curves have flattened)
  best      the best error over training (the tables' default selection)
  mask      the mean mask rate over the last fifth (the fraction of unlabeled samples whose
            pseudo-labels count; 1.0: the threshold selects everything)
  wrong     the mean number of wrong pseudo-labels selected per step over the last fifth

    python benchmarks/study_shape.py WORKDIR [--study NAME]

WORKDIR is a folder a study ran in (benchmarks/study.py --keep --workdir WORKDIR, or the project
folder itself): its results/<study>/<dataset>-<n>/<algorithm>/seed<k>/.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def mean_of(rows: list[dict[str, str]], key: str) -> float:
    values = [float(row[key]) for row in rows if row.get(key) not in (None, "")]
    return statistics.mean(values) if values else float("nan")


def run_shape(run_dir: Path) -> dict[str, float]:
    """One run's figures (see the module's docstring)."""
    evaluations = read_csv(run_dir / "evaluations.csv")
    last = int(evaluations[-1]["step"])
    at_80 = min(evaluations, key=lambda row: abs(int(row["step"]) - 0.8 * last))
    stats = [row for row in read_csv(run_dir / "train_stats.csv") if int(row["step"]) > 0.8 * last]
    return {"err80": float(at_80["ema/error"]), "err_end": float(evaluations[-1]["ema/error"]),
            "best": min(float(row["ema/error"]) for row in evaluations),
            "mask": mean_of(stats, "train/mask_rate"),
            "wrong": mean_of(stats, "train/n_selected_wrong")}


def study_shape(workdir: Path, study: str | None) -> dict[tuple[str, str], dict[str, float]]:
    runs: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    pattern = f"results/{study or '*'}/*/*/seed*/evaluations.csv"
    for path in sorted(workdir.glob(pattern)):
        budget, algorithm = path.parts[-4], path.parts[-3]
        runs[(budget, algorithm)].append(run_shape(path.parent))
    return {cell: {key: statistics.mean(run[key] for run in shapes) for key in shapes[0]}
            for cell, shapes in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--study", help="the study's name (default: every study in WORKDIR)")
    args = parser.parse_args()
    shape = study_shape(args.workdir, args.study)
    if not shape:
        raise SystemExit(f"no results/<study>/*/*/seed*/evaluations.csv under {args.workdir}")
    print(f"{'budget':12s} {'algorithm':16s} {'err@80%':>8s} {'err end':>8s} {'gain':>6s} "
          f"{'best':>7s} {'mask':>6s} {'wrong':>6s}")
    for (budget, algorithm), row in sorted(shape.items()):
        print(f"{budget:12s} {algorithm:16s} {row['err80']:8.2f} {row['err_end']:8.2f} "
              f"{row['err80'] - row['err_end']:6.2f} {row['best']:7.2f} {row['mask']:6.3f} "
              f"{row['wrong']:6.1f}")


if __name__ == "__main__":
    main()
