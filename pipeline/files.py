"""Atomic file writes: a killed job leaves either the old file or the new one, never half a file."""
from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)   # no space left, disk quota exceeded


def writable_dir(folder: str | Path) -> Path:
    """Create `folder` if needed and check that files can be written there, so that a job fails
    before hours of work rather than when it writes its results."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot create or write the folder {folder} ({error.strerror}); make it "
                        f"writable or choose another output location") from error
    return folder


def remove_stale_temporaries(folder: Path, prefix: str, suffix: str) -> list[Path]:
    """Delete `<prefix><pid><suffix>` (or `<prefix><pid>-<anything><suffix>`) files of processes
    that no longer run: what a write killed between creating its temporary file and renaming it
    left behind."""
    removed = []
    for leftover in folder.glob(f"{prefix}*{suffix}"):
        pid = leftover.name[len(prefix):len(leftover.name) - len(suffix)].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_runs(int(pid)):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it runs, as another user
        return True
    return True


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    writable_dir(path.parent)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
        remove_stale_temporaries(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
    except OSError as error:   # no permission, disk full, read-only file system, ...
        fix = (f"free space on the file system of {path.parent}" if error.errno in DISK_FULL
               else f"make {path.parent} writable")
        raise UserError(f"cannot write {path} ({error.strerror}); {fix} and rerun snakemake — "
                        f"finished work is kept") from error
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file"):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"the {what} {path} is missing; rerun snakemake to recreate it") from error
    except json.JSONDecodeError as error:
        raise UserError(f"the {what} {path} is not valid JSON ({error}); delete it and rerun "
                        f"snakemake to recreate it") from error
