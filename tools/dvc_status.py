"""CI's check that dvc.lock is current: what it records of the study stage (the code, params.yaml,
the command and the committed reports) is what the commit holds. `uv run dvc repro` writes it;
whoever changes the code, params.yaml or the committed reports reruns it and commits dvc.lock.

    uv run python tools/dvc_status.py

Clean means `dvc status` names no changed dependency, parameter or command, and no committed
output (reports/digits/, `cache: false` in dvc.yaml) that differs. The DVC-cached outputs,
data/ and results/, may be absent: a fresh clone has neither them nor the cache (`dvc pull`
fetches them); present but changed, they are not clean either (`dvc repro` or `dvc commit`).
Exit 1 naming each difference and the command that fixes it; 0 when clean, or, saying so, where
this folder is not a clone of the project (no .git), so that there is nothing to compare.
"""
from __future__ import annotations

import json
import subprocess
import sys

import yaml

from pipeline.config import ROOT

ABSENT = ("not in cache", "deleted")   # a cached output that this clone does not hold
FIX = ("run `uv run dvc repro` (it reruns the workflow where the change touches it) and commit "
       "dvc.lock with the reports it rewrites")


def cached_outputs(dvc_yaml: dict) -> set[str]:
    """The outputs of dvc.yaml's stages that DVC keeps in its cache (not `cache: false`)."""
    cached = set()
    for stage in dvc_yaml.get("stages", {}).values():
        for out in stage.get("outs", []):
            path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if (options or {}).get("cache", True):
                cached.add(path)
    return cached


def problems(status: dict, cached: set[str]) -> list[str]:
    """Each difference `dvc status --json` reports that makes dvc.lock stale."""
    found = []
    for stage, changes in status.items():
        for change in changes if isinstance(changes, list) else [changes]:
            if not isinstance(change, dict):   # e.g. "always changed"
                found.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                for path, state in (entries.items() if isinstance(entries, dict) else
                                    [(entries, "changed")]):
                    if kind == "changed outs" and path in cached and state in ABSENT:
                        continue
                    found.append(f"{stage}: {kind.removeprefix('changed ')} {path} {state}")
    return found


def main() -> int:
    if not (ROOT / ".git").exists():
        print("dvc status: not a clone of the project (no .git): nothing to compare, skipped")
        return 0
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"dvc status failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    cached = cached_outputs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    found = problems(json.loads(result.stdout or "{}"), cached)
    if found:
        print("dvc.lock is not current: " + "; ".join(found) + f". To fix it, {FIX}.",
              file=sys.stderr)
        return 1
    print("dvc status: dvc.lock is current (data/ and results/ may be absent: not pulled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
