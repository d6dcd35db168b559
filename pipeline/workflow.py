"""What the Snakefile needs besides the validated config: the environment its jobs run in.

Jobs run `python -m pipeline.<step>`: the Python that runs Snakemake (the project's locked
environment) comes first on PATH, and PYTHONPATH points at this workflow's own `pipeline` and
`semisup` (the code whose digest the runs record), whatever else the environment has installed.
Set again in every process that reads the Snakefile (on a cluster: each job's own Snakemake)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def set_job_environment(basedir: str | Path) -> None:
    basedir = str(Path(basedir).resolve())
    os.environ.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(Path(basedir, "ssl")), basedir,
                                    os.environ.get("PYTHONPATH", "")]))


def source_fingerprint(options: dict) -> str:
    """For a dataset read from a local folder (an option `path`): a digest of every file's
    relative name, size and modification time, so that changing the folder reruns its download;
    "" for datasets fetched from the internet (their checksums are fixed)."""
    folder = options.get("path")
    if not folder or not Path(folder).is_dir():
        return ""   # the download rule reports a missing folder
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                          .encode())
    return digest.hexdigest()
