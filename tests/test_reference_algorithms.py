"""benchmarks/reference_algorithms.py: every case runs on our side and is deterministic; its
comparison reports every wrong setting (our side with the setting stands in for semilearn's: one
hyperparameter moved is found), confines a known difference to where its case says; and, slow,
the whole script against semilearn 0.3.2 in its own environment."""
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
WRONG_CASES = [case for case in reference.CASES if case.wrong]


def records(case: Case, steps: int = STEPS) -> list[dict]:
    return run_ours(case, steps)[1]


def test_the_same_setting_twice_is_exact_to_the_bit():
    case = Case("uda", reference.UDA_AS_SEMILEARN)
    result = compare(records(case), records(case))
    assert result.exact and result.largest == 0.0 and not result.one_sided
    assert result.quantities == 14   # loss, 2 terms, mask, pseudo-labels, 5 gradients, 4 buffers
    assert reference.verdict(case, result, STEPS)[1]


def test_every_case_runs_on_our_side_with_its_quantities_and_the_same_numbers_twice():
    """Each case's problem is its own: the same records whatever ran before it."""
    for case in reference.CASES:
        problem, steps = run_ours(case, 2)
        table = reference.REFERENCES[case.name]
        assert set(table.ours) | {"loss"} <= set(steps[0]), case.label
        assert any(key.startswith("grad ") for key in steps[0]), case.label
        assert len(problem["steps"]) == 2 and problem["algorithm"] == table.semilearn
        again = compare(steps, records(case, 2))
        assert again.largest == 0.0 and not again.one_sided, case.label


def test_every_algorithm_has_an_exact_case_and_a_wrong_one():
    """A wrong case for every algorithm with a hyperparameter (supervised and fullysupervised
    have none)."""
    names = set(reference.REFERENCES)
    assert {case.name for case in reference.CASES} == names
    assert {case.name for case in reference.CASES if not case.wrong and not case.known} == names
    assert {case.name for case in WRONG_CASES} == names - {"supervised", "fullysupervised"}


@pytest.mark.parametrize("wrong_case", WRONG_CASES, ids=[case.label for case in WRONG_CASES])
def test_each_wrong_setting_is_reported(wrong_case):
    right = Case(wrong_case.name, wrong_case.setting, start=wrong_case.start,
                 semilearn=wrong_case.semilearn, batchnorm=wrong_case.batchnorm)
    steps = 12   # the script's default: long enough for a ramp, a running average or Dash's rho to move
    result = compare(records(wrong_case, steps), records(right, steps))
    assert not result.exact and (result.largest > 1e-3 or result.one_sided), result
    line, as_expected = reference.verdict(wrong_case, result, steps)
    assert as_expected and line.startswith("differs, as a wrong setting must")


@pytest.mark.parametrize("name,setting,wrong,quantity", [
    ("uda", reference.UDA_AS_SEMILEARN, {"tsa_rule": "true_class"}, "loss_sup"),
    ("uda", reference.UDA_AS_SEMILEARN, {"sharpen_targets": True}, "pseudo_labels"),
    ("fixmatch", {}, {"tau": 0.9}, "mask"),
    ("flexmatch", {}, {"threshold_warmup": False}, "state sigma"),
    ("remixmatch", {}, {"alignment_momentum": 0.99}, "state alignment.p_model"),
    ("adamatch", {}, {"ema_momentum": 0.99}, "state alignment.p_target"),
    ("defixmatch", {}, {"tau": 0.5}, "mask_labeled"),
    ("simmatch", reference.reference_cases.SIMMATCH_AS_SEMILEARN, {"bank_normalisation": "per_sample"},
     "state bank.rows"),
])
def test_a_wrong_setting_is_found_in_the_quantity_it_changes(name, setting, wrong, quantity):
    ours, theirs = records(Case(name, setting, wrong=wrong)), records(Case(name, setting))
    changed = [reference.difference(a[quantity], b[quantity]) for a, b in zip(ours, theirs, strict=True)]
    assert max(changed) > 1e-3


def test_an_unnoticed_wrong_setting_and_a_one_sided_quantity_are_failures():
    case = Case("fixmatch", wrong={"tau": 0.9})
    exact = reference.Comparison(largest=0.0, where="loss at step 0", quantities=3)
    assert reference.verdict(case, exact, STEPS)[0].startswith("NO DIFFERENCE FOUND")
    assert not reference.verdict(case, exact, STEPS)[1]
    ours = [{"loss": torch.tensor(1.0), "mask": torch.ones(2)}]
    result = compare(ours, [{"loss": torch.tensor(1.0)}])
    assert not result.exact and result.one_sided == ("mask (ours only)",)
    assert not reference.verdict(Case("fixmatch"), result, STEPS)[1]


def test_a_known_difference_must_stay_in_the_quantities_it_names():
    case = Case("crmatch", known="why", known_in=("grad head",))
    ours = [{"loss": torch.tensor(1.0), "grad head": torch.zeros(2)}]
    confined = [{"loss": torch.tensor(1.0), "grad head": torch.ones(2)}]
    result, rest = compare(ours, confined), compare(ours, confined, case.known_in)
    line, as_expected = reference.verdict(case, result, STEPS, rest)
    assert as_expected and line.startswith("NOT EXACT, no parameter names it: largest difference "
                                           "1.0e+00 in grad head at step 0; the rest within 1e-06")
    spread = [{"loss": torch.tensor(2.0), "grad head": torch.ones(2)}]
    line, as_expected = reference.verdict(case, compare(ours, spread), STEPS,
                                          compare(ours, spread, case.known_in))
    assert not as_expected and line.startswith("NOT EXACT beyond its known difference")


def test_names_go_to_semilearns_wrapper_and_back():
    names = {**reference.reference_cases.WRAPPED, "heads.proj.": "mlp_proj."}
    ours = {"grad backbone.0.weight": 1, "buffer backbone.1.running_mean": 2,
            "grad classifier.bias": 3, "grad heads.proj.2.weight": 4, "loss": 5}
    theirs = reference.renamed(ours, names)
    assert set(theirs) == {"grad backbone.backbone.0.weight", "buffer backbone.backbone.1.running_mean",
                           "grad backbone.classifier.bias", "grad mlp_proj.2.weight", "loss"}
    assert reference.renamed(theirs, names, backwards=True) == ours


def test_a_recorded_call_can_be_any_call_and_what_it_was_given():
    side = reference.semilearn_side

    class Hook:
        def masking(self, logits, threshold=0.5):
            return (logits > threshold).float()
    hook = Hook()
    calls = {"first": ("call", "hook", "masking", None, {"call": 0}),
             "last_given": ("call", "hook", "masking", ("kwarg", "threshold"), {}),
             "logits": ("call", "hook", "masking", ("arg", 0), {"call": 1}),
             "never": ("call", "hook", "masking", None, {"call": 5, "default": -1.0})}
    with side.recording(calls, lambda where: hook) as recorded:
        hook.masking(torch.tensor([0.2, 0.9]), threshold=0.1)
        hook.masking(torch.tensor([0.7, 0.3]), threshold=0.6)
    assert recorded["first"].tolist() == [1.0, 1.0] and float(recorded["last_given"]) == pytest.approx(0.6)
    assert recorded["logits"].tolist() == pytest.approx([0.7, 0.3]) and float(recorded["never"]) == -1.0
    assert "masking" not in vars(hook)   # the class's method again


def test_hard_labels_compare_with_one_hot_rows_and_differences_are_relative_above_one():
    labels, rows = torch.tensor([2, 0]), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert reference.difference(rows, labels) == 0.0 == reference.difference(labels, rows)
    assert reference.difference(torch.tensor([2, 1]), rows) == 1.0
    assert reference.difference(torch.tensor([100.0 + 1e-4]), torch.tensor([100.0])) < 2e-6
    assert reference.difference(torch.ones(3), torch.ones(2)) == float("inf")


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
    known = sum(bool(case.known) for case in reference.CASES)
    assert done.stdout.count("NOT EXACT, no parameter names it") == known
