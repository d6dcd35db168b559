"""The CI regression study (configs/ci.yaml): rerun it and compare its metrics with the committed
tests/golden/ci_metrics.json; the same run also makes the Dash figures, the HTML report, and the
progress lines of the training logs and of Snakemake.

Tolerance: tools/regression.py TOLERANCE (1e-6 absolute, on error rates in %): the ci study runs on
the CPU with one thread and train.portable_numerics, so it is bit-identical from run to run and
from one x86-64 CPU to another; metrics.json rounds to 4 decimals.
"""
import os
import re
import subprocess
import sys

import pytest
import yaml

from pipeline.config import ROOT, deep_merge, load_params, load_study
from pipeline.files import read_json
# tools/regression.py: pyproject.toml puts tools/ on the tests' import path
from regression import (GOLDEN, TOLERANCE, RegressionError, check, ci_metrics_path,
                        differences, metrics_only, run_ci_study)

# End to end (real Snakemake, subprocesses, MLflow): `uv run pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ci")
    result = run_ci_study(workdir, cores=2)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result


def test_ci_study_reproduces_the_golden_metrics(ci_study):
    workdir, _ = ci_study
    problem = None
    try:
        check(read_json(GOLDEN), read_json(ci_metrics_path(workdir)), TOLERANCE)
    except RegressionError as error:
        problem = str(error)   # names each metric, its expected and its actual value
    if problem:
        pytest.fail(problem, pytrace=False)


def test_ci_study_writes_the_dash_figures_and_report_pages(ci_study):
    workdir, _ = ci_study
    for name in ("error_curves", "dash_rho", "pseudo_labels"):
        assert (workdir / f"reports/ci/figures/{name}.pdf").read_bytes().startswith(b"%PDF")
        assert (workdir / f"reports/ci/figures/{name}.png").stat().st_size > 1000
    assert "<table" in (workdir / "reports/ci/report/tables.html").read_text()
    assert "Dash" in (workdir / "results/ci/report/run_times.html").read_text()


def test_snakemake_report_is_one_self_contained_html_file(ci_study):
    workdir, _ = ci_study
    result = run_ci_study(workdir, extra=("--report", "reports/report.html"))
    assert result.returncode == 0, result.stderr[-4000:]
    report = (workdir / "reports/report.html").read_text()
    assert len(report) < 20_000_000
    # Everything is inlined: no scripts, styles or images fetched from elsewhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", report)
    for name in ("dash_rho.png", "pseudo_labels.png", "error_curves.png", "tables.html",
                 "run_times.html", "Run times"):
        assert name in report
    assert r'ssl-repro: study <tt class=\"docutils literal\">ci</tt>' in report   # workflow.rst


def test_training_logs_and_snakemake_show_progress(ci_study):
    workdir, result = ci_study
    log = (workdir / "logs/ci/train/digits-10-dash-seed0.log").read_text()
    assert re.search(r"step 30/60 \(50%\) [\d.]+ steps/s, ETA \d+s, test error ema [\d.]+%", log)
    assert re.search(r"\d+ of \d+ steps \(100%\) done", result.stderr)


# What another runner's CPU changes: ATen's vector width, MKL's and oneDNN's instruction sets
# (this one has AVX-512: the emulated runner has less).
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"}


def train_ci_run(workdir, out, env_extra: dict) -> dict:
    """One run of the ci study (FixMatch, seed 0) by the train rule's command, in a fresh process
    with `env_extra` in its environment."""
    config = yaml.safe_load((ROOT / "configs/ci.yaml").read_text())
    study = load_study(deep_merge(load_params(ROOT / "params.yaml"), config))
    run = study.run_config("digits", 10, "fixmatch", 0)
    env = {**os.environ, **env_extra, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db"}
    command = [sys.executable, "-m", "pipeline.runs.train", "--run-config", run.to_json(),
               "--manifest", str(workdir / study.manifest_path("digits")),
               "--split", str(workdir / study.split_path("digits", 10, 0)),
               "--out", str(out / "run"), "--checkpoint-dir", str(out / "checkpoints")]
    # cwd: MLflow puts the run's artifacts in ./mlruns
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read_json(out / "run/metrics.json")["metrics"]


def test_portable_numerics_give_the_same_bits_on_other_cpu_code_paths(ci_study, tmp_path):
    """A run pinned by train.portable_numerics computes the same numbers when the CPU offers
    other code paths (emulated here by capping ATen, MKL and oneDNN at AVX2): the committed
    metrics hold on a CI runner with another CPU (with AVX2)."""
    workdir, _ = ci_study
    expected = read_json(workdir / "results/ci/digits-10/fixmatch/seed0/metrics.json")["metrics"]
    assert train_ci_run(workdir, tmp_path, OTHER_CPU) == expected


def test_pinning_selects_the_portable_kernels():
    """Pinned, a convolution of a batch of 16 (where torch would pick NNPACK or oneDNN) runs
    ATen's own kernel, and ATen dispatches to its AVX2 code."""
    code = ("from pipeline.runs.device import pin_cpu_numerics; pin_cpu_numerics()\n"
            "import os, torch\n"
            "conv = torch.nn.Conv2d(8, 8, 3, padding=1)\n"
            "with torch.profiler.profile() as prof:\n"
            "    conv(torch.randn(16, 8, 8, 8)).sum().backward()\n"
            "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'])\n"
            "print(*sorted({event.name for event in prof.events() if 'conv' in event.name}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **OTHER_CPU}, cwd=ROOT)
    capability, kernels = result.stdout.splitlines()[-2:]
    assert capability.split() == ["AVX2", "COMPATIBLE"], result.stderr
    assert "aten::_slow_conv2d_forward" in kernels.split(), kernels
    assert "nnpack" not in kernels and "mkldnn" not in kernels, kernels


def test_check_names_the_metric_the_expected_and_the_actual_value():
    expected = {"digits-10": {"dash": {"ema/best_error": 40.0, "raw/best_error": 50.0}}}
    actual = {"digits-10": {"dash": {"ema/best_error": 40.2012, "raw/best_error": 50.0,
                                     "mlflow_run_ids": ["abc"]}}}
    with pytest.raises(RegressionError) as caught:
        check(expected, actual, tolerance=1e-6)
    message = str(caught.value)
    assert "digits-10/dash/ema/best_error: expected 40, actual 40.2012" in message
    assert "tolerance 1e-06" in message and "tools/regression.py accept" in message
    assert "raw/best_error" not in message


def test_moves_within_the_tolerance_pass_and_missing_metrics_fail():
    expected = {"digits-10": {"fixmatch": {"ema/best_error": 40.0}}}
    check(expected, {"digits-10": {"fixmatch": {"ema/best_error": 40.0000004}}}, tolerance=1e-6)
    lines = differences(expected, {"digits-10": {"dash": {"ema/best_error": 40.0}}}, 1e-6)
    assert lines == [
        "digits-10/dash/ema/best_error: a new metric (actual 40) that the expected metrics do "
        "not have",
        "digits-10/fixmatch/ema/best_error: expected 40, but the run has no such metric"]


def test_golden_file_holds_only_numbers():
    assert metrics_only({"a": {"b": 1.5, "ids": ["x"], "flag": True}}) == {"a": {"b": 1.5}}
    golden = read_json(GOLDEN)
    assert set(golden["digits-10"]) == {"supervised", "fixmatch", "dash"}
