"""The study's files as they are when the workflow starts, looked at before Snakemake plans a job.

- A split or a dataset manifest edited by hand is refused with the project's error, whatever has
  run before. (A check inside an input function would not do: Snakemake then drops the job that
  reads the file and keeps that job's outputs, and says "Nothing to be done".)
- A file of the chain deleted by hand while files made from it are still there is made again,
  with everything that follows from it. Snakemake alone does not remake a missing intermediate
  file when everything downstream of it is up to date, so "delete it and rerun snakemake", the
  advice of the errors about broken files, would otherwise do nothing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from ..config import Study
from ..errors import UserError
from ..files import read_json


def check_existing_inputs(study: Study) -> None:
    """Check the study's manifest and splits that exist (a hand-edited file: its sha256,
    duplicate or out-of-range indices, the raw data it was made from); UserError naming the
    file and the fix."""
    manifest_path = Path(study.manifest_path(study.dataset))
    splits = [Path(study.split_path(study.dataset, n_labels, seed))
              for n_labels, seed in product(study.config["study"]["n_labels"],
                                            study.config["study"]["seeds"])]
    if not manifest_path.exists():
        return   # the download rule makes it, and the splits follow from it
    from ..data.download import read_manifest, train_shape   # (imports torch: only with data)

    manifest = read_manifest(manifest_path)
    existing = [path for path in splits if path.exists()]
    if not existing:
        return
    from semisup.data.splits import verify_split

    num_train = train_shape(manifest["shapes"])[0]
    for path in existing:
        verify_split(read_json(path, "split file"), str(path), num_train)
        if read_json(path, "split file").get("dataset_digest") != manifest["digest"]:
            raise UserError(f"{path} was made from other raw data than {manifest_path} "
                            f"describes; delete the split and rerun snakemake to recreate it")


@dataclass(frozen=True)
class Step:
    """One job's files, and the files of the jobs that are made from them."""

    outputs: tuple[str, ...]
    made_from_them: tuple[str, ...]


def study_steps(study: Study, train_files: list[str], summary: str,
                reports: list[str]) -> list[Step]:
    """The study's download, split, train and evaluate jobs as Steps. `train_files` are the train
    rule's outputs, `summary` the evaluate rule's output, with their wildcards; `reports` the
    files of the report rules (which Snakemake remakes when missing: the rule `all` asks for
    them)."""
    config = study.config["study"]
    dataset, budgets, seeds = study.dataset, config["n_labels"], config["seeds"]
    algorithms = config["algorithms"]

    def train(n_labels, algorithm, seed) -> tuple[str, ...]:
        values = dict(dataset=dataset, n_labels=n_labels, algorithm=algorithm, seed=seed)
        return tuple(pattern.format(**values) for pattern in train_files)

    def summary_of(n_labels, algorithm) -> str:
        return summary.format(dataset=dataset, n_labels=n_labels, algorithm=algorithm)

    splits = {(n, s): study.split_path(dataset, n, s) for n, s in product(budgets, seeds)}
    steps = [Step((study.manifest_path(dataset),), tuple(splits.values()))]
    steps += [Step((path,), tuple(f for a in algorithms for f in train(n, a, s)))
              for (n, s), path in splits.items()]
    steps += [Step(train(n, a, s), (summary_of(n, a), *reports))
              for n, a, s in product(budgets, algorithms, seeds)]
    steps += [Step((summary_of(n, a),), tuple(reports)) for n, a in product(budgets, algorithms)]
    return steps


def lost_outputs(study: Study, train_files: list[str], summary: str,
                 reports: list[str]) -> list[str]:
    """A missing output of every job of the study (study_steps) that lost one while a file made
    from its outputs is still there, each named on stderr: the rule `all` asks for them, so
    Snakemake makes them again and reruns every job that follows from them."""
    lost = []
    for step in study_steps(study, train_files, summary, reports):
        missing = [path for path in step.outputs if not Path(path).exists()]
        if missing and any(Path(path).exists() for path in step.made_from_them):
            lost.append(missing[0])
            print(f"ssl-repro: {missing[0]} is missing while files made from it are there: its "
                  f"job runs again, and every job that follows from it", file=sys.stderr)
    return lost
