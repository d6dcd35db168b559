"""The CI regression check: rerun the tiny study of configs/ci.yaml and compare its metrics with
the committed ones in tests/golden/ci_metrics.json.

  uv run python tools/regression.py check    run the ci study in a fresh temporary folder;
                                             fail naming every metric that moved beyond the
                                             tolerance, with its expected and actual value
  uv run python tools/regression.py accept   run it and write its metrics as the new expected
                                             ones (after an intended change; commit the file)

It runs from any folder: it imports the project's packages (`pipeline`, `semisup`) as installed
in the project's environment, and finds the Snakefile, configs/ci.yaml and the golden file
beside them.

`--metrics reports/ci/metrics.json` compares or accepts an existing run's metrics instead of
running the study. The runs are deterministic on every x86-64 CPU (configs/ci.yaml sets device
cpu, one thread and train.portable_numerics), so the default tolerance only absorbs the 4-decimal
rounding of metrics.json.
`dvc metrics diff <commit> --targets tests/golden/ci_metrics.json` shows what a commit changed.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config import ROOT, load_params, load_study
from pipeline.errors import UserError, argument_parser, cli
from pipeline.files import read_json, write_json

GOLDEN = ROOT / "tests/golden/ci_metrics.json"
CI_CONFIG = ROOT / "configs/ci.yaml"
# Absolute tolerance on every metric (error rates and their stds, in %). One test image of the
# 497 is 0.2 points, so any change in a prediction fails the check.
TOLERANCE = 1e-6
ACCEPT_COMMAND = "uv run python tools/regression.py accept"


class RegressionError(UserError):
    pass


def flatten(document: dict, prefix: str = "") -> dict[str, float]:
    """{"digits-10": {"dash": {"ema/best_error": 1.0}}} -> {"digits-10/dash/ema/best_error": 1.0};
    non-numbers (the MLflow run ids) are left out."""
    flat = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def metrics_only(document: dict) -> dict:
    """The metrics document without its non-numeric entries: the golden file's content."""
    kept = {}
    for key, value in document.items():
        if isinstance(value, dict):
            kept[key] = metrics_only(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = value
    return kept


def differences(expected: dict, actual: dict, tolerance: float) -> list[str]:
    """One line per metric that moved beyond `tolerance` (absolute), is missing or is new."""
    want, got = flatten(expected), flatten(actual)
    lines = []
    for name in sorted(want.keys() | got.keys()):
        if name not in got:
            lines.append(f"{name}: expected {want[name]:g}, but the run has no such metric")
        elif name not in want:
            lines.append(f"{name}: a new metric (actual {got[name]:g}) that the expected "
                         f"metrics do not have")
        elif not math.isclose(want[name], got[name], rel_tol=0.0, abs_tol=tolerance):
            lines.append(f"{name}: expected {want[name]:g}, actual {got[name]:g} (difference "
                         f"{got[name] - want[name]:+.4g}, tolerance {tolerance:g})")
    return lines


def check(expected: dict, actual: dict, tolerance: float = TOLERANCE,
          source: str = "the ci study") -> None:
    """Raise RegressionError listing every metric that moved, and how to accept the change."""
    lines = differences(expected, actual, tolerance)
    if lines:
        raise RegressionError(
            f"{len(lines)} metric(s) of {source} differ from {GOLDEN.relative_to(ROOT)}:\n  "
            + "\n  ".join(lines) + f"\nIf the change is intended, accept it with `{ACCEPT_COMMAND}`"
            " and commit tests/golden/ci_metrics.json.")


def run_ci_study(workdir: Path, cores: int = 2, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Snakemake on configs/ci.yaml in `workdir` (its own data, results and MLflow store)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir.resolve()}/mlflow.db"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--configfile", str(CI_CONFIG), "--cores", str(cores), *extra]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)


def ci_metrics_path(workdir: Path) -> Path:
    study = load_study(load_params(ROOT / "params.yaml", CI_CONFIG), source=str(CI_CONFIG))
    return workdir / study.reports_dir / "metrics.json"


def fresh_metrics(cores: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ssl-repro-ci-") as folder:
        print(f"running the ci study (configs/ci.yaml) in {folder} ...", flush=True)
        result = run_ci_study(Path(folder), cores)
        if result.returncode != 0:
            raise RegressionError("the ci study failed; Snakemake's output ends with:\n"
                                  + result.stderr[-3000:])
        return read_json(ci_metrics_path(Path(folder)), "ci study metrics file")


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("action", choices=["check", "accept"])
    parser.add_argument("--metrics", type=Path,
                        help="an existing metrics.json of the ci study (default: run the study "
                             "in a fresh temporary folder)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"absolute tolerance of `check` (default {TOLERANCE:g})")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores for the run")
    args = parser.parse_args(argv)
    actual = (read_json(args.metrics, "metrics file") if args.metrics
              else fresh_metrics(args.cores))
    if args.action == "accept":
        moved = (differences(read_json(GOLDEN, "expected metrics file"), actual, TOLERANCE)
                 if GOLDEN.exists() else [])
        write_json(GOLDEN, metrics_only(actual))
        print(f"wrote {GOLDEN.relative_to(ROOT)} ({len(flatten(actual))} metrics); "
              f"{len(moved)} changed" + "".join(f"\n  {line}" for line in moved))
        return
    try:
        check(read_json(GOLDEN, "expected metrics file"), actual, args.tolerance)
    except RegressionError as error:   # one line per metric: not the one-paragraph user error
        print(f"ssl-repro regression: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: all {len(flatten(actual))} metrics match {GOLDEN.relative_to(ROOT)} "
          f"(tolerance {args.tolerance:g})")


if __name__ == "__main__":
    main()
