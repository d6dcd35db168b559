"""A one-off change never overwrites a study's reports silently.

A study is what its config files say: params.yaml and the --configfile files up to the last one
that names it (study.name or reports.dir). Editing those files on purpose and rerunning rewrites
the study's reports, as it should. What comes after them, a --config value or a later
--configfile that does not name the study, is an override: when it changes what the study
computes (a run's config, which runs there are, how the tables select and report) and the
study's reports folder already holds reports, the workflow stops before any job and says how to
proceed: give the run its own name, or say reports.overwrite: true. An override that changes only
where jobs run (train.device, train.threads) changes nothing computed and passes.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path

from ..config import EXECUTION_KEYS, Study, load_params, load_study
from ..errors import ConfigError, UserError

# Report settings that say where and whether to write, not what is written.
REPORT_PLACES = ("dir", "overwrite")
MAX_CHANGES_NAMED = 3


def names_the_study(config: dict) -> bool:
    return bool((config.get("study") or {}).get("name")) or \
        (config.get("reports") or {}).get("dir") is not None


def own_files(config_files: list[Path]) -> list[Path]:
    """params.yaml and the --configfile files up to the last one that names the study."""
    last = max((index for index, path in enumerate(config_files)
                if names_the_study(load_params(path))), default=0)
    return config_files[:last + 1]


def computed(study: Study) -> dict:
    """What a study computes: every run's config hash, the settings of its tables and the names
    of its rows in them (a variant's label is in no run's hash)."""
    config = study.config["study"]
    runs = {f"{n}-{a}-seed{s}": study.run_config(study.dataset, n, a, s).config_hash
            for n, a, s in product(config["n_labels"], config["algorithms"], config["seeds"])}
    reports = {k: v for k, v in study.config["reports"].items() if k not in REPORT_PLACES}
    return {"runs": runs, "reports": reports, "labels": study.row_labels()}


def changed_keys(before, after, prefix: str = "") -> list[str]:
    """'key: old -> new' for every value that differs (execution settings left out)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [change for key in sorted(set(before) | set(after), key=str)
                if f"{prefix}{key}" not in {f"train.{k}" for k in EXECUTION_KEYS}
                and f"{prefix}{key}" != "reports.overwrite"
                for change in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    if before == after:
        return []
    return [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]


def has_reports(folder: str) -> bool:
    return Path(folder).is_dir() and any(path.is_file() for path in Path(folder).rglob("*"))


def check_overrides(study: Study, config_files: list[Path], command_line: dict) -> None:
    """Stop (UserError) when an override would overwrite the reports of the study its config
    files define; see the module's docstring."""
    own = own_files(config_files)
    overrides = [f"--configfile {path.name}" for path in config_files[len(own):]]
    overrides += ["--config"] if command_line else []
    if not overrides or study.config["reports"]["overwrite"]:
        return
    try:
        defined = load_study(load_params(*own))
    except ConfigError:   # the overrides complete the files: they are part of the study
        return
    if defined.reports_dir != study.reports_dir or computed(defined) == computed(study) \
            or not has_reports(study.reports_dir):
        return
    changes = changed_keys(defined.config, study.config)
    named = "; ".join(changes[:MAX_CHANGES_NAMED]) + ("; ..." if len(changes) > MAX_CHANGES_NAMED
                                                       else "")
    verb, keep = ("changes", "keeps") if len(overrides) == 1 else ("change", "keep")
    raise UserError(
        f"{' and '.join(overrides)} {verb} what the study {study.name!r} computes ({named}) but "
        f"{keep} its name, so this run would overwrite {study.reports_dir}/, which holds the "
        f"reports of the study as {' and '.join(path.name for path in own)} define it. Give this "
        f"run its own name, e.g. --config study='{{\"name\": \"{study.name}-try\"}}' (its "
        f"results, reports and MLflow experiment are then its own; or set study.name in the "
        f"override's config file), or, to rewrite {study.reports_dir}/ with this configuration, "
        f"add --config reports='{{\"overwrite\": true}}'. Nothing was run")
