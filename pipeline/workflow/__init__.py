"""What the Snakefile computes besides the validated config, while it builds the DAG: the
environment its jobs run in, a local dataset folder's fingerprint (a download param) and the
train jobs' run config files. Beside it: the checks of the study's files before any job is
planned (inputs.py), of one-off overrides (overrides.py), and the warnings about where the
training jobs would run (devices.py).

Jobs run `python -m pipeline.<stage>.<step>`: the Python that runs Snakemake (the project's locked
environment) comes first on PATH, and PYTHONPATH points at this workflow's own `pipeline` and
`semisup` (the code whose digest the runs record), whatever else the environment has installed.
Set again in every process that reads the Snakefile (on a cluster: each job's own Snakemake)."""
from __future__ import annotations

import hashlib
import os
import shutil
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
            # the name as the file system holds it: a name that is not UTF-8 (Python reads it with
            # surrogates, which str.encode refuses) counts as its bytes, a UTF-8 one as before
            digest.update(os.fsencode(path.relative_to(folder))
                          + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def write_run_configs(runs: dict) -> None:
    """Each train job's --run-config file (path -> RunConfig), written when the workflow starts,
    so that a job's command line is short; rewritten only when it changed. (A changed run config
    still reruns its job: the train rule has the config itself as a parameter.)"""
    import json

    from ..files import write_text

    for path, run in runs.items():
        text = json.dumps(run.as_dict(), indent=2, sort_keys=True) + "\n"
        if not Path(path).is_file() or Path(path).read_text() != text:
            write_text(path, text)


# Snakemake's own copies of the scripts that draw DVC's plots (its HTML reports use them too).
PLOT_SCRIPTS = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")


def place_plot_scripts(folder: str | Path = "dvc_plots") -> None:
    """Put vega, vega-lite and vega-embed (with their licenses) into `folder`, beside the page
    `dvc plots show` writes there, which loads them from there (.dvc/plots.html): the page then
    works without internet. Only in a DVC project (a .dvc folder here), and only when changed."""
    if not Path(".dvc").is_dir():
        return
    import snakemake

    assets = Path(snakemake.__file__).parent / "assets" / "data"
    for name in PLOT_SCRIPTS:
        script = assets / name
        for source, target in ((script, Path(folder, script.name)),
                               (script.with_name("LICENSE"), Path(folder, f"{script.stem}.LICENSE"))):
            if source.is_file() and (not target.is_file()
                                     or target.stat().st_size != source.stat().st_size):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
