"""The traps of a first hour, through Snakemake on the tiny finished study (tests/conftest.py): a
one-off override never overwrites a study's reports; an edited input is refused with the
project's one paragraph whatever has run before; and the advice of an error works when followed.
Independent calls run at once (tests/conftest.py: snakemake_all)."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY, snakemake, snakemake_all
from semisup.data.splits import indices_sha256

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

TINY_RUN = ["--cores", "2", "--configfile", "tiny.yaml"]
FIXMATCH_SEED1 = Path("results/tiny/digits-10/fixmatch/seed1/metrics.json")


def paragraph(stderr: str) -> str:
    assert stderr.count("ssl-repro error:") == 1, stderr[-3000:]
    return " ".join(stderr[stderr.index("ssl-repro error:"):].split("\n\n")[0].split())


def refused(result, *expected: str) -> None:
    """Stopped with the project's one paragraph, before Snakemake planned a job."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Building DAG" not in result.stderr
    message = paragraph(result.stderr)
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def snapshot(workdir: Path) -> dict[str, str]:
    return {str(path.relative_to(workdir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("data", "results", "reports") for path in
            sorted((workdir / folder).rglob("*")) if path.is_file()}


def split_file(workdir: Path, seed: int = 0) -> Path:
    return next((workdir / "data/splits/digits").glob(f"*/10/seed{seed}.json"))


def edit_split(path: Path, edit) -> None:
    """Change the labeled indices and reseal them with their sha256, as a careful hand would."""
    split = json.loads(path.read_text())
    split["labeled_indices"] = edit(split["labeled_indices"])
    split["split_sha256"] = indices_sha256(split["labeled_indices"])
    path.write_text(json.dumps(split))


def copy_of(study: Path, folder: Path) -> Path:
    return Path(shutil.copytree(study, folder, symlinks=True))


def test_a_one_off_override_never_overwrites_the_reports(tiny_copy):
    tiny_study = tiny_copy
    (tiny_study / "tweak.yaml").write_text(yaml.safe_dump({"train": {"steps": 8}}))
    (tiny_study / "tiny-edited.yaml").write_text(yaml.safe_dump(
        {**TINY, "train": {**TINY["train"], "steps": 8}}))   # the study's own file, edited
    dry = ["--cores", "2", "--dry-run", "--configfile"]
    results = snakemake_all({
        "steps": (tiny_study, [*dry, "tiny.yaml", "--config", 'train={"steps": 8}']),
        "seeds": (tiny_study, [*dry, "tiny.yaml", "--config", 'study={"seeds": [0]}']),
        "file": (tiny_study, [*dry, "tiny.yaml", "tweak.yaml"]),
        "named": (tiny_study, [*dry, "tiny.yaml", "--config", 'train={"steps": 8}',
                               'study={"name": "tiny-try"}']),
        "overwrite": (tiny_study, [*dry, "tiny.yaml", "--config", 'train={"steps": 8}',
                                   'reports={"overwrite": true}']),
        "edited": (tiny_study, [*dry, "tiny-edited.yaml"])})
    refused(results["steps"], "--config changes what the study 'tiny' computes (train.steps: 6 "
            "-> 8)", "would overwrite reports/tiny/", """--config study='{"name": "tiny-try"}'""")
    refused(results["seeds"], "(study.seeds: [0, 1] -> [0])")
    refused(results["file"], "--configfile tweak.yaml changes what the study 'tiny' computes")
    for name in ("named", "overwrite", "edited"):
        assert results[name].returncode == 0, results[name].stderr[-3000:]
    assert "reports/tiny-try/tables/main.tex" in results["named"].stdout
    for name in ("overwrite", "edited"):   # the study's reports are rewritten, as asked
        assert "reports/tiny/tables/main.tex" in results[name].stdout


def test_an_edited_split_is_refused_whatever_has_run(tiny_study, tmp_path):
    """A duplicate index, then -1, resealed with their sha256: refused by `snakemake` and by
    `snakemake --forceall` in the finished study, and in a study that has not run yet (its data
    only). A check inside an input function would say "Nothing to be done" instead."""
    duplicate = copy_of(tiny_study, tmp_path / "duplicate")
    edit_split(split_file(duplicate), lambda indices: [indices[0], *indices[:-1]])
    minus_one = copy_of(tiny_study, tmp_path / "minus-one")
    edit_split(split_file(minus_one), lambda indices: [-1, *indices[1:]])
    not_run = tmp_path / "not-run"
    shutil.copytree(minus_one / "data", not_run / "data")
    shutil.copy(tiny_study / "tiny.yaml", not_run)
    before = {path: snapshot(path) for path in (duplicate, minus_one)}
    results = snakemake_all({
        "duplicate": (duplicate, TINY_RUN), "forceall": (duplicate, [*TINY_RUN, "--forceall"]),
        "minus one": (minus_one, TINY_RUN), "not run": (not_run, TINY_RUN)})
    for name in ("duplicate", "forceall"):
        refused(results[name], "seed0.json: labeled_indices repeats an index",
                "Delete it and rerun snakemake")
    for name in ("minus one", "not run"):
        refused(results[name], "seed0.json: labeled_indices holds [-1]",
                "Delete it and rerun snakemake")
    assert {path: snapshot(path) for path in before} == before   # every result kept
    assert not (not_run / "results").exists()


def test_an_edited_manifest_is_refused_and_deleting_it_plans_the_download(tiny_study, tmp_path):
    edited, deleted = (copy_of(tiny_study, tmp_path / name) for name in ("edited", "deleted"))
    manifest = next((edited / "data/raw/digits").glob("*/manifest.json"))
    content = json.loads(manifest.read_text())
    content["files"]["extra.npz"] = "0" * 64   # its digest no longer matches
    manifest.write_text(json.dumps(content))
    next((deleted / "data/raw/digits").glob("*/manifest.json")).unlink()
    results = snakemake_all({"edited": (edited, TINY_RUN),
                             "deleted": (deleted, [*TINY_RUN, "--dry-run"])})
    refused(results["edited"], "is not one that the download rule wrote", "Delete it and rerun")
    plan = results["deleted"]
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "manifest.json is missing while files made from it are there" in plan.stderr
    assert "\ndownload " in plan.stdout and "Nothing to be done" not in plan.stdout


def test_the_advice_of_an_edited_split_and_a_truncated_metrics_file_works(tiny_copy):
    """Follow each message: delete the file it names and rerun snakemake. The split is made
    again (the same, as splits are seeded), the lost metrics.json too (Snakemake alone would say
    "Nothing to be done"), and the reports come back byte for byte."""
    reports = {path: path.read_bytes() for path in (tiny_copy / "reports/tiny").rglob("*.json")}
    split = split_file(tiny_copy)
    original_split = split.read_bytes()
    edit_split(split, lambda indices: [indices[0], *indices[:-1]])
    metrics = tiny_copy / FIXMATCH_SEED1
    metrics.write_text(metrics.read_text()[:100])   # truncated
    refused(snakemake(tiny_copy, *TINY_RUN), "labeled_indices repeats an index",
            "Delete it and rerun snakemake")
    split.unlink()
    second = snakemake(tiny_copy, *TINY_RUN)
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert split.read_bytes() == original_split
    said = " ".join(second.stderr.split())   # the failed job's log, shown by the profile
    assert f"the run metrics file {FIXMATCH_SEED1} is not valid JSON" in said
    assert "delete it and rerun snakemake to recreate it" in said
    metrics.unlink()
    third = snakemake(tiny_copy, *TINY_RUN)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"{FIXMATCH_SEED1} is missing while files made from it are there" in third.stderr
    assert {path: path.read_bytes() for path in reports} == reports
    again = snakemake(tiny_copy, *TINY_RUN, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr
