"""Rule `evaluate`: aggregate one (dataset, n_labels, row: an algorithm or a variant of one) over
seeds: mean, std, n of every metric, with each seed's provenance (MLflow run id, hashes, git
commit).

Snakemake starts this rule only once it has recorded the seeds' train jobs as complete, so it is
also where their checkpoint folders go (--accepted-checkpoints; pipeline/runs/checkpoints.py)."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import argument_parser, cli
from ..files import read_json, write_json
from . import checkpoints

# What identifies the run that made a number, the same on every machine that reproduces it (the
# MLflow run is found by these tags; its id and the git commit differ from run to run).
PROVENANCE = ("config_hash", "code_digest", "split_sha256", "dataset_digest")


def aggregate(per_seed: list[dict]) -> dict:
    keys = sorted(per_seed[0]["metrics"])
    summary = {}
    for key in keys:
        values = [seed["metrics"][key] for seed in per_seed]
        summary[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "n": len(values), "values": values}
    return summary


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--metrics", nargs="+", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--accepted-checkpoints", nargs="*", default=[], type=Path,
                        help="the checkpoint folders of the train jobs Snakemake has accepted")
    args = parser.parse_args(argv)
    per_seed = [read_json(path, "run metrics file") for path in args.metrics]
    runs = [read_json(path.with_name("run.json"), "run provenance file") for path in args.metrics]
    first = per_seed[0]["run"]
    summary = {
        "study": first["study"], "dataset": first["dataset"], "n_labels": first["n_labels"],
        "algorithm": first["algorithm"], "model": first["model"],
        # a variant's summary names it (its table row); an algorithm's own has no such key
        **({"variant": first["variant"]} if first.get("variant") else {}),
        "last_k": first["train"]["last_k"],   # of the median/mean metrics
        "metrics": aggregate(per_seed),
        "seeds": [{"seed": m["run"]["seed"], "mlflow_run_id": r["mlflow_run_id"],
                   **{key: m[key] for key in PROVENANCE}, "git_commit": m["git_commit"],
                   "wall_seconds": r["wall_seconds"]}
                  for m, r in zip(per_seed, runs, strict=True)],
    }
    write_json(args.out, summary)
    print(f"wrote {args.out} over {len(per_seed)} seeds")
    for folder in args.accepted_checkpoints:
        if checkpoints.remove(folder):
            print(f"removed the finished run's checkpoint folder {folder}")


if __name__ == "__main__":
    main()
