"""The rows of a study: each name in `study.algorithms` is a registered algorithm, run with the
study's settings, or a variant (params.yaml's `variants:`), the same algorithm run with other
settings as a row of its own (the Dash paper's FixMatch (CTA) beside FixMatch (RA)).

A row's name keys everything the workflow makes of it: its results folder, its run configs (a
variant's records its name, so its config hash is its own), its MLflow runs, its summary and its
table row. Torch-free: the Snakefile and the validation read it.
"""
from __future__ import annotations

import copy

from semisup.catalog import display_name


def variants_of(config: dict) -> dict[str, dict]:
    """The config's variants (an old config file without the section has none)."""
    return config.get("variants") or {}


def algorithm_of(config: dict, row: str) -> str:
    """The registered algorithm a row runs: a variant's `algorithm`, else the row itself."""
    variant = variants_of(config).get(row)
    return variant["algorithm"] if variant else row


def variant_name(config: dict, row: str) -> str | None:
    """The row's name if it is a variant, None for a registered algorithm's own row."""
    return row if row in variants_of(config) else None


def row_label(config: dict, row: str) -> str:
    """How the reports name a row: a variant's `label`, else reports.labels' name for the
    algorithm, else the algorithm's display name (semisup.catalog)."""
    variant = variants_of(config).get(row)
    if variant:
        return variant["label"]
    return (config.get("reports", {}).get("labels") or {}).get(row) or display_name(row)


def row_labels(config: dict) -> dict[str, str]:
    """Every row of the study with its name in the reports, in the study's order."""
    return {row: row_label(config, row) for row in config["study"]["algorithms"]}


def row_algorithm_params(config: dict, row: str) -> dict:
    """A row's hyperparameters: the algorithm's `algorithms:` block, a variant's
    `algorithm_params` on top."""
    params = copy.deepcopy(config["algorithms"][algorithm_of(config, row)])
    variant = variants_of(config).get(row)
    return {**params, **copy.deepcopy(variant.get("algorithm_params", {}))} if variant else params
