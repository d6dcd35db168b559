"""Checkpoint files: written atomically (a failed write keeps the previous one whole), read
without ever falling back to a fresh start silently."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import CheckpointError


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`. A
    write that fails (disk full) leaves the previous file whole and raises CheckpointError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except (OSError, RuntimeError) as error:   # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        step = obj.get("step") if isinstance(obj, dict) else None
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise CheckpointError(
            f"cannot write the checkpoint {path} at step {step} ({reason}; {free:,} bytes free "
            f"on its file system). Training stopped; the previous checkpoint, if any, is kept "
            f"whole. Free some space there (a WRN-28-8 checkpoint takes about 0.3 GB) and "
            f"rerun snakemake to resume from it") from error
    finally:
        tmp.unlink(missing_ok=True)   # no half file left


def load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # any failure to read is reported, never skipped
        raise CheckpointError(
            f"the checkpoint {path} exists but cannot be read ({type(error).__name__}: {error}). "
            f"Refusing to start afresh silently: delete {path} to restart this run from step 0, "
            f"or restore a good copy of it") from error
