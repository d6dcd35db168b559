"""What the Snakefile needs besides the validated config: the environment its jobs run in.

Jobs run `python -m pipeline.<step>`: the Python that runs Snakemake (the project's locked
environment) comes first on PATH, and PYTHONPATH points at this workflow's own `pipeline` and
`semisup` (the code whose digest the runs record), whatever else the environment has installed.
Set again in every process that reads the Snakefile (on a cluster: each job's own Snakemake)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def set_job_environment(basedir: str | Path) -> None:
    basedir = str(Path(basedir).resolve())
    os.environ.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(Path(basedir, "ssl")), basedir,
                                    os.environ.get("PYTHONPATH", "")]))
