"""benchmarks/reference_algorithms.py: its comparison reports a wrong setting, on our side alone
(the same setting twice is exact to the bit; one hyperparameter moved is found in the quantity it
changes), and, slow, the whole script against semilearn 0.3.2 in its own environment."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reference = load("reference_algorithms")
Case, compare, run_ours = reference.Case, reference.compare, reference.run_ours
STEPS = 3


def records(case: Case) -> list[dict]:
    return run_ours(case, STEPS)[1]


def test_the_same_setting_twice_is_exact_to_the_bit():
    case = Case("uda", reference.UDA_AS_SEMILEARN)
    result = compare(records(case), records(case))
    assert result.exact and result.largest == 0.0 and not result.one_sided
    assert result.quantities == 14   # loss, 2 terms, mask, pseudo-labels, 5 gradients, 4 buffers
    assert reference.verdict(case, result, STEPS)[1]


@pytest.mark.parametrize("name,setting,wrong,quantity", [
    ("uda", reference.UDA_AS_SEMILEARN, {"tsa_rule": "true_class"}, "loss_sup"),
    ("uda", reference.UDA_AS_SEMILEARN, {"sharpen_targets": True}, "pseudo_labels"),
    ("fixmatch", {}, {"tau": 0.9}, "mask"),
    ("flexmatch", {}, {"threshold_warmup": False}, "state sigma"),
], ids=["uda-tsa_rule", "uda-sharpen_targets", "fixmatch-tau", "flexmatch-threshold_warmup"])
def test_a_wrong_setting_is_reported_in_the_quantity_it_changes(name, setting, wrong, quantity):
    """Our side with semilearn's setting stands in for semilearn's; the wrong one must differ."""
    wrong_case = Case(name, setting, wrong=wrong)
    ours, theirs = records(wrong_case), records(Case(name, setting))
    result = compare(ours, theirs)
    assert not result.exact
    changed = [reference.difference(a[quantity], b[quantity]) for a, b in zip(ours, theirs, strict=True)]
    assert max(changed) > 1e-3
    line, as_expected = reference.verdict(wrong_case, result, STEPS)
    assert as_expected and line.startswith("differs, as a wrong setting must")


def test_an_unnoticed_wrong_setting_and_a_one_sided_quantity_are_failures():
    case = Case("fixmatch", wrong={"tau": 0.9})
    exact = reference.Comparison(largest=0.0, where="loss at step 0", quantities=3)
    assert reference.verdict(case, exact, STEPS)[0].startswith("NO DIFFERENCE FOUND")
    assert not reference.verdict(case, exact, STEPS)[1]
    ours = [{"loss": torch.tensor(1.0), "mask": torch.ones(2)}]
    result = compare(ours, [{"loss": torch.tensor(1.0)}])
    assert not result.exact and result.one_sided == ("mask (ours only)",)
    assert not reference.verdict(Case("fixmatch"), result, STEPS)[1]


def test_hard_labels_compare_with_one_hot_rows_and_differences_are_relative_above_one():
    labels, rows = torch.tensor([2, 0]), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert reference.difference(rows, labels) == 0.0 == reference.difference(labels, rows)
    assert reference.difference(torch.tensor([2, 1]), rows) == 1.0
    assert reference.difference(torch.tensor([100.0 + 1e-4]), torch.tensor([100.0])) < 2e-6
    assert reference.difference(torch.ones(3), torch.ones(2)) == float("inf")


def test_every_case_runs_on_our_side_with_the_quantities_its_reference_names():
    for case in reference.CASES:
        problem, steps = run_ours(case, 2)
        table = reference.REFERENCES[case.name]
        assert set(table.ours) | {"loss"} <= set(steps[0]), case.label
        assert any(key.startswith("grad ") for key in steps[0]), case.label
        assert len(problem["steps"]) == 2 and problem["algorithm"] == table.semilearn


@pytest.mark.slow
def test_every_case_comes_out_as_expected_against_semilearn_0_3_2():
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed: it makes semilearn 0.3.2's environment")
    try:
        reference.semilearn_side.semilearn_python(reference.semilearn_side.DEFAULT_ENV,
                                                  "semilearn==0.3.2")
    except subprocess.CalledProcessError as error:
        pytest.skip(f"semilearn 0.3.2's environment could not be made (offline, and semilearn "
                    f"not in uv's cache?): {error}")
    done = subprocess.run([sys.executable, "benchmarks/reference_algorithms.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = len(reference.CASES)
    assert f"{cases} of {cases} cases as expected" in done.stdout
    assert done.stdout.count("  OK  ") == sum(not case.wrong and not case.known for case in reference.CASES)
