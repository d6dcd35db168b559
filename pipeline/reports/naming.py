"""How the reports name things: a study's data in captions and figure titles (the dataset's name,
or, for a study on the user's own images (image_folder), the study's name, which the user chose
for them), and a study's rows (a registered algorithm or a variant) and their labels."""
from __future__ import annotations


def data_name(dataset: str, study: str) -> str:
    return study if dataset == "image_folder" else dataset


def row_name(record: dict) -> str:
    """The table row of a run (the `run` of its metrics.json) or of a summary: its variant's name
    (pipeline/variants.py), else its algorithm's."""
    return record.get("variant") or record["algorithm"]


def label_of(row: str, labels: dict[str, str]) -> str:
    """How the reports name a row: the study's label for it (the rules get every row's with
    --labels), else the algorithm's display name."""
    from semisup.catalog import display_name

    return labels.get(row) or display_name(row)


def read_labels(text: str) -> dict[str, str]:
    """A report rule's --labels: JSON {row: label} (Study.row_labels, which the Snakefile gives)."""
    import json

    from ..errors import UserError

    try:
        labels = json.loads(text)
    except ValueError as error:
        raise UserError(f"--labels {text!r} is not valid JSON ({error}); give a JSON object "
                        f"of row names and labels, e.g. '{{\"fixmatch_cta\": \"FixMatch (CTA)\"}}'"
                        ) from error
    if not isinstance(labels, dict) or not all(isinstance(value, str) for value in labels.values()):
        raise UserError(f"--labels {text!r} is not a JSON object of row names and labels (text), "
                        f"e.g. '{{\"fixmatch_cta\": \"FixMatch (CTA)\"}}'")
    return labels
