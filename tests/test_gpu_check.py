"""benchmarks/gpu_check.sh, the one prepared GPU check (issue 32), runs on the CPU too, so that a
broken script is found before a lent GPU's minutes are spent on it; its parts stop at their own
time limits; and benchmarks/peer_step.py's medians and ratios are what its runs say."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from peer_step import summarize

PARTS = ["install", "environment", "cuda_tests", "train_step", "peer", "augment", "smoke_study",
         "compile"]


def gpu_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), *args],
                          env={**os.environ, "OUT": str(out), **env}, capture_output=True,
                          text=True, timeout=900, check=False)


def statuses(summary: str) -> dict[str, str]:
    lines = summary.split("\n\n")[0].splitlines()[1:]
    return {line.split()[0]: line.split(None, 1)[1] for line in lines}


@pytest.fixture(scope="module")
def semilearn_bundle(tmp_path_factory) -> Path | None:
    """A folder with semilearn's wheels: .gpu-bundle where gpu_bundle.sh made it, else downloaded
    now (None where PyPI cannot be reached)."""
    if list((ROOT / ".gpu-bundle/semilearn").glob("semilearn-*.whl")):
        return ROOT / ".gpu-bundle"
    bundle = tmp_path_factory.mktemp("gpu-bundle")
    result = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_bundle.sh"), "--semilearn-only",
                             str(bundle)], capture_output=True, text=True, check=False)
    return bundle if result.returncode == 0 else None


@pytest.mark.slow
def test_the_cpu_smoke_run_passes_every_part_and_writes_at_most_8_files(tmp_path, semilearn_bundle):
    result = gpu_check(tmp_path, "--cpu-smoke", GPU_BUNDLE=str(semilearn_bundle or tmp_path))
    summary = (tmp_path / "summary.txt").read_text()
    expected_failures = set() if semilearn_bundle else {"peer"}   # no semilearn wheel to be had
    failed = {part for part, status in statuses(summary).items() if not status.startswith("ok")}
    assert failed == expected_failures, summary + (tmp_path / "check.log").read_text()[-3000:]
    assert list(statuses(summary)) == PARTS
    assert result.returncode == (1 if expected_failures else 0)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) <= 8 and all(path.parent == tmp_path for path in files)
    assert {path.name for path in files} >= {"summary.txt", "check.log", "environment.txt",
                                             "smoke_study.json", "smoke_metrics.json"}
    assert "ratio (b)/(a)" in summary and "smoke study error digits_rgb32-40 fixmatch" in summary
    if semilearn_bundle:
        assert "ratio ssl-repro / semilearn: input pipeline" in summary


def test_a_part_past_its_limit_is_stopped_and_the_next_parts_still_run(tmp_path):
    result = gpu_check(tmp_path, "--cpu-smoke", GPU_CHECK_PARTS="cuda_tests:1 install:60")
    parts = statuses((tmp_path / "summary.txt").read_text())
    assert parts["cuda_tests"].startswith("TIMED OUT at 1s")
    assert parts["install"].startswith("ok")
    assert result.returncode == 1
    assert "=== cuda_tests: TIMED OUT" in (tmp_path / "check.log").read_text()


def test_parts_beyond_the_budget_are_skipped_and_named(tmp_path):
    gpu_check(tmp_path, "--cpu-smoke", GPU_CHECK_PARTS="install:60 environment:20",
              GPU_CHECK_BUDGET="4")
    parts = statuses((tmp_path / "summary.txt").read_text())
    assert parts == {"install": "skipped: the 4s budget is spent",
                     "environment": "skipped: the 4s budget is spent"}


def record(pipeline: str, inputs: float, steps: float, memory: float | None = None) -> dict:
    return {"pipeline": pipeline, "input_per_second": inputs, "steps_per_second": steps,
            "peak_memory_mb": memory}


def test_peer_summary_takes_each_pipelines_median_and_the_ratio_of_medians():
    runs = [record("semilearn", 10, 2, 900), record("ssl-repro", 100, 3, 500),
            record("ssl-repro", 300, 5, 600), record("semilearn", 30, 4, 1000),
            record("semilearn", 20, 3, 950), record("ssl-repro", 200, 4, 550),
            {"pipeline": "semilearn", "error": "exit 1"}]
    summary = summarize(runs)
    assert summary["semilearn"] == {"input_per_second": 20, "steps_per_second": 3,
                                    "peak_memory_mb": 1000, "runs": 3}
    assert summary["ssl-repro"]["input_per_second"] == 200
    assert summary["ratio"] == {"input_per_second": 10.0, "steps_per_second": 4 / 3}


def test_peer_summary_without_semilearn_runs_has_no_ratio():
    summary = summarize([record("ssl-repro", 100, 3), {"pipeline": "semilearn", "error": "x"}])
    assert "ratio" not in summary and "semilearn" not in summary
    assert summary["ssl-repro"]["peak_memory_mb"] is None
