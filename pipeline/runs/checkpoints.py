"""A training job's checkpoint folder, kept outside the rule's outputs so that a killed job keeps it:

  checkpoints/<study>/<dataset>-<n_labels>/<row>/seed<k>/<config hash>-<code digest>/
    checkpoint.pt      the trainer's state, every train.checkpoint_every steps and at the last
    mlflow_run.json    the job's MLflow run (pipeline.runs.tracking.RunLogger)

The config hash and code digest in the path make a changed config or code start afresh instead of
resuming a stale run. The folder goes only once Snakemake has accepted the job's outputs: the rule
`evaluate` removes it, and Snakemake starts that rule only after it has recorded the train jobs it
reads as complete. A train job stopped at any moment before that, even after it wrote every
output, resumes from its checkpoint (at the last step: without training) into the same MLflow run.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..files import remove_stale_temporaries
from ..run_config import RunConfig

CHECKPOINT = "checkpoint.pt"
RUN_RECORD = "mlflow_run.json"


def checkpoint_dir(run: RunConfig, code_digest: str) -> str:
    """The checkpoint folder of `run` trained by the code of digest `code_digest` (the train
    rule's, pipeline/code.py)."""
    return (f"checkpoints/{run.study}/{run.dataset}-{run.n_labels}/{run.row}/"
            f"seed{run.seed}/{run.config_hash[:16]}-{code_digest[:12]}")


def remove(folder: Path) -> bool:
    """Delete a finished run's checkpoint folder (a WRN-28-8 checkpoint is about 0.3 GB), so that
    rerunning after deleting the outputs starts afresh. Returns whether there was one."""
    existed = folder.exists()
    for leftover in (CHECKPOINT, RUN_RECORD):
        (folder / leftover).unlink(missing_ok=True)
    # writes killed before their rename (semisup.train.save_atomically, pipeline.files)
    remove_stale_temporaries(folder, f".{CHECKPOINT}.", ".tmp")
    remove_stale_temporaries(folder, f".{Path(RUN_RECORD).stem}.", f".tmp{Path(RUN_RECORD).suffix}")
    with contextlib.suppress(OSError):   # something else lives there: leave it
        folder.rmdir()
    return existed
