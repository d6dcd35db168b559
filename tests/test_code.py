"""Code-aware reruns (pipeline/code.py): a job depends on the code it runs, and on nothing else.
A change to an algorithm reruns that algorithm's training runs and what follows from them; a
change to the tables module reruns the tables; a comment or a docstring reruns nothing. The
workflow test edits a temporary copy of the project and reads the dry run's job list."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import code
from pipeline.config import ROOT

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

TRAIN_USES = {"algorithm": "fixmatch", "model": "small_cnn", "dataset": "digits"}


def test_a_training_run_depends_on_its_own_algorithm_model_and_dataset_modules_only():
    modules = code.closure("pipeline.runs.train", TRAIN_USES)
    assert {"semisup.algorithms.fixmatch", "semisup.algorithms.masking", "semisup.algorithms.base",
            "semisup.algorithms.weak_to_strong", "semisup.models.cnn", "semisup.data.digits",
            "semisup.train", "pipeline.runs.tracking"} <= set(modules)
    assert not {"semisup.algorithms.dash", "semisup.algorithms.flexmatch", "semisup.models.wrn",
                "semisup.data.public", "pipeline.reports.tables"} & set(modules)
    # the supervised baseline imports no pseudo-labelling code, so it does not depend on it
    supervised = code.closure("pipeline.runs.train", {**TRAIN_USES, "algorithm": "supervised"})
    assert "semisup.algorithms.supervised" in supervised
    assert not {"semisup.algorithms.fixmatch", "semisup.algorithms.weak_to_strong"} & set(supervised)


def test_a_training_run_depends_on_what_a_run_config_is_not_on_how_params_are_checked():
    modules = code.closure("pipeline.runs.train", TRAIN_USES)
    assert "pipeline.run_config" in modules
    assert not {"pipeline.config", "pipeline.validation"} & set(modules)


def test_each_registered_component_is_found_in_the_module_that_defines_it():
    from semisup.algorithms import ALGORITHMS
    from semisup.data import DATASETS
    from semisup.models import MODELS

    defined = {**{("algorithm", n): c.__module__ for n, c in ALGORITHMS.items()},
               **{("model", n): c.__module__ for n, c in MODELS.items()},
               **{("dataset", n): s.load.__module__ for n, s in DATASETS.items()}}
    for package, kind in code.REGISTRIES.items():
        modules = {path.stem for path in code.module_path(package).parent.glob("*.py")}
        providers = {f"{package}.{m}": code.provides(f"{package}.{m}") for m in modules
                     if m != "__init__"}
        for (each_kind, name), module in defined.items():
            if each_kind == kind:
                assert [m for m, names in providers.items() if name in names] == [module], name
        # a shared module provides nothing, so every job depends on it
        assert {m for m, names in providers.items() if names} == {
            module for (each_kind, _), module in defined.items() if each_kind == kind}


def forget_caches() -> None:
    """pipeline.code caches per process what it read; forget it once the sources change."""
    for cached in (code.syntax_tree, code.normalized_source, code.imports, code.provides,
                   code._digest):
        cached.cache_clear()


def test_comments_docstrings_and_layout_do_not_count(tmp_path, monkeypatch):
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    rule = package / "rule.py"
    monkeypatch.setitem(code.SOURCE_ROOTS, "pipeline", package)

    def digest_of(source: str) -> str:
        rule.write_text(source)
        forget_caches()
        return code.code_digest("pipeline.rule")
    try:
        before = digest_of('"""A rule."""\nX = 1\n\ndef f():\n    return X + 1\n')
        assert digest_of('"""Another text."""\nX = 1  # why\n\n\ndef f():\n'
                         '    """What f does."""\n    return (X +\n            1)\n') == before
        assert digest_of('"""A rule."""\nX = 1\n\ndef f():\n    return X + 2\n') != before
    finally:
        monkeypatch.undo()
        forget_caches()


# ---- the workflow, in a temporary copy of the project -------------------------------------------
STUDY = {"study": {"name": "code", "n_labels": [10], "seeds": [0],
                   "algorithms": ["supervised", "fixmatch", "fixmatch_halved"]},
         "train": {"steps": 4, "batch_size": 8, "uratio": 2, "eval_every": 2, "log_every": 2,
                   "checkpoint_every": 2, "last_k": 2}}


def snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                           "code.yaml", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)


def planned_jobs(project: Path) -> list[str]:
    """The dry run's jobs, as rule[:algorithm] (the algorithm of a train or evaluate job)."""
    result = snakemake(project, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if match:
            algorithm = re.search(r"algorithm=(\w+)", block)
            jobs.append(match.group(1) + (f":{algorithm.group(1)}" if algorithm else ""))
    return sorted(jobs)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project's tracked files that has run a tiny study."""
    project = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if not name.startswith(("reports/", "tests/")) and (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    (project / "code.yaml").write_text(yaml.safe_dump(STUDY))
    add_a_subclass_of_fixmatch(project)
    result = snakemake(project)
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(project) == []
    return project


SUBCLASS = '''"""FixMatch with half its threshold: a subclass, in its own module."""
from . import register
from .fixmatch import FixMatch


@register
class FixMatchHalved(FixMatch):
    name = "fixmatch_halved"
    display_name = "FixMatch (tau / 2)"
    reference = "a test of code digests"
    hyperparameters = """
      tau: {description: Twice the threshold., type: number, minimum: 0, maximum: 1}
      lambda_u: {description: Weight of the unsupervised loss., type: number, minimum: 0}
    """

    def __init__(self, *, tau, **base):
        super().__init__(tau=tau / 2, **base)
'''


def add_a_subclass_of_fixmatch(project: Path) -> None:
    """An algorithm that inherits FixMatch's step: its module and its block in params.yaml, as
    a user adds one."""
    (project / "ssl/semisup/algorithms/fixmatch_halved.py").write_text(SUBCLASS)
    params = project / "params.yaml"
    edit(params, "  fixmatch: {tau: 0.95, lambda_u: 1.0}\n",
         "  fixmatch: {tau: 0.95, lambda_u: 1.0}\n  fixmatch_halved: {tau: 0.95, lambda_u: 1.0}\n")


def test_a_comment_or_a_docstring_reruns_nothing(project):
    fixmatch = project / "ssl/semisup/algorithms/fixmatch.py"
    tables = project / "pipeline/reports/tables.py"
    saved = fixmatch.read_text(), tables.read_text()
    try:
        edit(fixmatch, '    name = "fixmatch"\n', '    name = "fixmatch"   # the registry key\n')
        edit(fixmatch, 'cross-entropy of the strong view against them."""',
             'cross-entropy of the strong view against them (docstring edited)."""')
        edit(tables, "def render(", "# a comment\ndef render(")
        assert planned_jobs(project) == []
    finally:
        fixmatch.write_text(saved[0])
        tables.write_text(saved[1])


def test_editing_fixmatchs_mask_reruns_the_runs_of_fixmatch_and_of_its_subclass_only(project):
    """The subclass's module imports fixmatch.py: its digest follows FixMatch's code (and the
    supervised runs, which import neither, stay)."""
    fixmatch = project / "ssl/semisup/algorithms/fixmatch.py"
    saved = fixmatch.read_text()
    try:
        edit(fixmatch, "fixed_threshold_mask(confidence, self.tau)",
             "fixed_threshold_mask(confidence, self.tau * 0.9)")
        assert planned_jobs(project) == [
            "all", "evaluate:fixmatch", "evaluate:fixmatch_halved", "figures", "report_pages",
            "tables", "train:fixmatch", "train:fixmatch_halved"]
    finally:
        fixmatch.write_text(saved)
    assert planned_jobs(project) == []


def test_editing_the_shared_weak_to_strong_step_reruns_its_family_not_the_baseline(project):
    family = project / "ssl/semisup/algorithms/weak_to_strong.py"
    saved = family.read_text()
    try:
        edit(family, "loss = loss_sup + self.lambda_u * loss_unsup",
             "loss = loss_sup + self.lambda_u * 2 * loss_unsup")
        jobs = planned_jobs(project)
        assert {"train:fixmatch", "train:fixmatch_halved"} <= set(jobs)
        assert "train:supervised" not in jobs
    finally:
        family.write_text(saved)


def test_editing_the_tables_module_reruns_the_tables_only(project):
    tables = project / "pipeline/reports/tables.py"
    saved = tables.read_text()
    try:
        edit(tables, "model. Bold: the lowest ", "model. Bold: the very lowest ")
        assert planned_jobs(project) == ["all", "report_pages", "tables"]
    finally:
        tables.write_text(saved)
