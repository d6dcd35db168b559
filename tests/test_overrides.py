"""A one-off override never overwrites a study's reports silently (pipeline/workflow/overrides.py):
the study is what its config files say; a --config value, or a later --configfile that does not
name the study, that changes what it computes stops before any job when the study's reports
folder holds reports, and says how to proceed. On hand-made folders, without Snakemake (tests/
test_traps.py runs the same through it)."""
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import ROOT, command_line_overrides, deep_merge, load_params, load_study
from pipeline.errors import UserError
from pipeline.workflow.overrides import check_overrides


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder whose default study (digits) has reports."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "reports/digits/tables").mkdir(parents=True)
    (tmp_path / "reports/digits/tables/main.tex").write_text("the committed table")
    return tmp_path


def check(project: Path, *entries: str, files: dict[str, dict] | None = None) -> None:
    """What the Snakefile does: params.yaml, the --configfile files (name -> content) and the
    --config entries, merged and validated, then checked."""
    for name, content in (files or {}).items():
        (project / name).write_text(yaml.safe_dump(content))
    config_files = [project / "params.yaml", *(project / name for name in files or {})]
    command_line = command_line_overrides(list(entries))
    study = load_study(deep_merge(load_params(*config_files), command_line))
    check_overrides(study, config_files, command_line)


@pytest.mark.parametrize("entry, change", [
    ('train={"steps": 200}', "train.steps: 1000 -> 200"),
    ('study={"seeds": [0]}', "study.seeds: [0, 1, 2] -> [0]"),
    ('study={"algorithms": ["fixmatch"]}', "study.algorithms: ["),
    ('reports={"selection": "last"}', "reports.selection: 'best' -> 'last'"),
])
def test_a_one_off_override_stops_before_it_overwrites_the_reports(project, entry, change):
    with pytest.raises(UserError) as caught:
        check(project, entry)
    message = str(caught.value)
    assert message.startswith("--config changes what the study 'digits' computes (")
    for part in (change, "would overwrite reports/digits/", "as params.yaml define it",
                 """--config study='{"name": "digits-try"}'""",
                 """--config reports='{"overwrite": true}'""", "Nothing was run"):
        assert part in message
    assert (project / "reports/digits/tables/main.tex").read_text() == "the committed table"


def test_an_override_with_its_own_name_or_the_overwrite_flag_proceeds(project):
    check(project, 'train={"steps": 200}', 'study={"name": "digits-try"}')
    check(project, 'train={"steps": 200}', 'reports={"dir": "reports/try"}')
    check(project, 'train={"steps": 200}', 'reports={"overwrite": true}')


def test_an_override_of_where_jobs_run_changes_nothing_computed(project):
    check(project, 'train={"threads": 4}')


def test_an_override_before_the_study_has_reports_proceeds(project):
    shutil.rmtree(project / "reports")
    check(project, 'train={"steps": 200}')


def test_the_studys_own_files_edited_on_purpose_rewrite_its_reports(project):
    """params.yaml edited, or a config file that names the study (as configs/*.yaml do)."""
    (project / "params.yaml").write_text((project / "params.yaml").read_text()
                                         .replace("steps: 1000", "steps: 200"))
    check(project)
    check(project, files={"mine.yaml": {"study": {"name": "digits"}, "train": {"steps": 100}}})


def test_a_config_file_that_does_not_name_the_study_is_an_override(project):
    with pytest.raises(UserError, match=r"^--configfile tweak.yaml changes what the study "
                                        r"'digits' computes \(train.steps: 1000 -> 100\)"):
        check(project, files={"tweak.yaml": {"train": {"steps": 100}}})
    with pytest.raises(UserError, match=r"^--configfile tweak.yaml and --config change .* but "
                                        r"keep its name"):
        check(project, 'train={"lr": 0.1}', files={"tweak.yaml": {"train": {"steps": 100}}})
