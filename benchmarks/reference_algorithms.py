"""Check ssl-repro's algorithms against semilearn 0.3.2's own code, step by step.

    uv run python benchmarks/reference_algorithms.py [--env DIR] [--steps 12] [--only NAME ...]

It makes (or reuses) a separate environment with semilearn 0.3.2 and this project's torch, numpy
and pillow (benchmarks/semilearn_side.py: `uv`, from uv's cache), then for every case below:

1. runs our algorithm (params.yaml's hyperparameters, with the case's settings) for `--steps`
   steps on a tiny network (conv, BatchNorm, ReLU, pool, linear) and random batches, taking an
   SGD step after each, and records each step's weights, batch, loss, loss terms, mask,
   pseudo-labels, gradients, BatchNorm buffers and running state;
2. runs semilearn's own algorithm class (its train_step and hooks, benchmarks/semilearn_side.py)
   in that environment on the same weights and batches, step by step, its own state carried over;
3. compares: every quantity of every step within TOLERANCE (absolute; relative above 1).

A case's `setting` names where we differ from semilearn on purpose (the schema documents it): we
run with semilearn's value there and print it. A case with `wrong` sets one of our hyperparameters
away from semilearn's on our side only: the comparison must report a difference. A case with
`known` differs in a way no parameter names: the output says so. The exit status is 1 if any case
does not come out as its table entry expects.

To add an algorithm: a `Reference` in REFERENCES (semilearn's registry name, its arguments from
our hyperparameters, where each side's loss terms, mask and pseudo-labels come from, which state to
compare) and its lines in CASES.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.data.modality import DataFacts
from semisup.models import Network
from semisup.models.cnn import Features

from pipeline.config import default_params

_spec = importlib.util.spec_from_file_location("semilearn_side",
                                               Path(__file__).with_name("semilearn_side.py"))
semilearn_side = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(semilearn_side)

PARAMS = default_params()["algorithms"]
TOLERANCE = 1e-6
NUM_CLASSES, BATCH, MU, NUM_UNLABELED, TOTAL_STEPS, LEARNING_RATE = 3, 4, 2, 16, 20, 0.1
NETWORK = dict(channels=2, width=8)
LOGIT_SCALE = 24.0  # the classifier's initial weights x this: confident and unconfident samples

# Where each side's quantities come from: ("stat", our stats key), ("log", semilearn's log_dict
# key), or ("call", where, attribute, select[, default]): what that callable returns in the step.
LOSS_TERMS_OURS = {"loss_sup": ("stat", "loss_sup"), "loss_unsup": ("stat", "loss_unsup")}
LOSS_TERMS_SEMILEARN = {"loss_sup": ("log", "train/sup_loss"), "loss_unsup": ("log", "train/unsup_loss")}
PSEUDO_LABELS_OURS = {**LOSS_TERMS_OURS, "mask": ("call", "algorithm", "pseudo_label", "mask"),
                      "pseudo_labels": ("call", "algorithm", "pseudo_label", "targets")}
PSEUDO_LABELS_SEMILEARN = {**LOSS_TERMS_SEMILEARN, "mask": ("call", "hook:MaskingHook", "masking", None),
                           "pseudo_labels": ("call", "hook:PseudoLabelingHook", "gen_ulb_targets", None)}


def no_preparation(algorithm, params: dict, start: dict) -> None:
    pass


def dash_rho_hat(algorithm, params: dict, start: dict) -> None:
    """Dash usb: the end-of-warm-up evaluation gives rho_hat (semilearn: rho_init)."""
    algorithm.on_evaluation(params["warmup_steps"], {"ema/loss": start["rho_hat"]}, None, None)


@dataclass(frozen=True)
class Reference:
    """How one of our algorithms maps onto semilearn's."""

    semilearn: str                                    # semilearn's registry name
    arguments: Callable[[dict], dict] = lambda params: {}   # its own, from our hyperparameters
    ours: dict = field(default_factory=lambda: PSEUDO_LABELS_OURS)         # quantity -> source
    theirs: dict = field(default_factory=lambda: PSEUDO_LABELS_SEMILEARN)
    state: dict = field(default_factory=dict)   # our state attribute -> (semilearn hook, attribute)
    unlabeled: tuple[str, ...] = ("x_ulb_w", "x_ulb_s")   # train_step's names of our unlabeled views
    first_step: Callable[[dict], int] = lambda params: 0
    iteration: Callable[[int, dict], int] = lambda step, params: step   # semilearn's `it` then
    prepare: Callable = no_preparation                    # (our algorithm, params, case.start)
    attributes: Callable[[dict, dict], dict] = lambda params, start: {}   # set on semilearn's


PSEUDO_LABEL = "semisup.algorithms.pseudolabel"   # its step calls these module functions
FREEMATCH_FAIRNESS = ("call", "semilearn.algorithms.freematch.freematch", "entropy_loss", 0, 0.0)
REFERENCES = {
    "supervised": Reference("supervised", ours={"loss_sup": ("stat", "loss_sup")},
                            theirs={"loss_sup": ("log", "train/sup_loss")}),
    "pseudolabel": Reference(
        "pseudolabel", lambda p: {"p_cutoff": p["tau"], "unsup_warm_up": p["rampup_fraction"]},
        ours={**LOSS_TERMS_OURS, "mask": ("call", PSEUDO_LABEL, "fixed_threshold_mask", None),
              "pseudo_labels": ("call", PSEUDO_LABEL, "confidence_and_pseudo_labels", 1)}),
    "meanteacher": Reference("meanteacher", lambda p: {"unsup_warm_up": p["rampup_fraction"]},
                             ours=LOSS_TERMS_OURS, theirs=LOSS_TERMS_SEMILEARN),
    "uda": Reference("uda", lambda p: {"p_cutoff": p["tau"], "T": p["T"], "tsa_schedule": p["tsa_schedule"]}),
    # semilearn's T (0.5) only sharpens soft labels: unused with its hard ones.
    "fixmatch": Reference("fixmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "T": 0.5}),
    "flexmatch": Reference(
        "flexmatch", lambda p: {"p_cutoff": p["tau"], "hard_label": True, "T": 0.5,
                                "thresh_warmup": p["threshold_warmup"], "ulb_dest_len": NUM_UNLABELED},
        state={"sigma": ("MaskingHook", "selected_label")}),
    # usb only (official follows the TensorFlow code). semilearn restarts `it` after its warm-up;
    # rho_hat comes from the warm-up's evaluation (rho_hat_model), outside the step: both get it.
    "dash": Reference(
        "dash", lambda p: {"T": p["T"], "gamma": p["gamma"], "C": p["C"], "rho_min": p["rho_min"],
                           "num_wu_iter": p["warmup_steps"], "epoch": TOTAL_STEPS // p["steps_per_epoch"]},
        first_step=lambda p: p["warmup_steps"], iteration=lambda step, p: step - p["warmup_steps"],
        prepare=dash_rho_hat,
        attributes=lambda p, start: {"rho_init": start["rho_hat"], "warmup_stage": False}),
    "freematch": Reference(
        "freematch", lambda p: {"ema_p": p["ema_momentum"], "ent_loss_ratio": p["lambda_fairness"],
                                "hard_label": True, "T": 0.5, "use_quantile": False, "clip_thresh": False},
        ours={**PSEUDO_LABELS_OURS, "loss_fairness": ("stat", "loss_fairness")},
        theirs={**PSEUDO_LABELS_SEMILEARN, "loss_fairness": FREEMATCH_FAIRNESS},
        state={"tau_global": ("MaskingHook", "time_p"), "p_model": ("MaskingHook", "p_model"),
               "label_hist": ("MaskingHook", "label_hist")}),
    # semilearn's SoftMatch aligns whatever its dist_align says (it always registers the hook).
    "softmatch": Reference(
        "softmatch", lambda p: {"ema_p": p["ema_momentum"], "n_sigma": p["n_sigma"], "hard_label": True,
                                "T": 0.5, "dist_align": True, "dist_uniform": True, "per_class": False},
        state={"mu": ("MaskingHook", "prob_max_mu_t"), "var": ("MaskingHook", "prob_max_var_t"),
               "alignment.p_model": ("DistAlignHook", "p_model")}),
}


@dataclass(frozen=True)
class Case:
    name: str                     # our registered algorithm (REFERENCES has its mapping)
    setting: dict = field(default_factory=dict)   # ours, both sides: semilearn's behaviour, or coverage
    wrong: dict = field(default_factory=dict)     # ours, our side only: must differ
    start: dict = field(default_factory=dict)     # both sides start from these (Dash's rho_hat)
    batchnorm: bool = True
    known: str = ""               # a difference no parameter names: why

    @property
    def label(self) -> str:
        words = [f"{key}={value}" for key, value in {**self.setting, **self.start}.items()]
        words += [] if self.batchnorm else ["network without BatchNorm"]
        words += [f"WRONG {key}={value}" for key, value in self.wrong.items()]
        return self.name + (f" ({', '.join(words)})" if words else "")


UDA_AS_SEMILEARN = {"tsa_schedule": "linear", "tsa_rule": "max_probability", "sharpen_targets": False}
DASH_USB = {"variant": "usb", "steps_per_epoch": 1}   # rho decays every 10 steps: within the run
CASES = [
    Case("supervised"),
    Case("pseudolabel"),
    Case("meanteacher", {"batchnorm": "separate"}),   # semilearn's BatchNorm batches
    Case("meanteacher", {"batchnorm": "separate"}, wrong={"batchnorm": "joint"}),
    Case("meanteacher", batchnorm=False),   # joint and separate agree without BatchNorm
    Case("uda", UDA_AS_SEMILEARN),
    Case("uda", UDA_AS_SEMILEARN, wrong={"tsa_rule": "true_class"}),
    Case("uda", UDA_AS_SEMILEARN, wrong={"sharpen_targets": True}),
    Case("fixmatch"),
    Case("fixmatch", wrong={"tau": 0.9}),
    Case("flexmatch"),
    Case("flexmatch", wrong={"threshold_warmup": False}),
    Case("dash", DASH_USB, start={"rho_hat": 1.0}),
    Case("dash", DASH_USB, start={"rho_hat": 0.06}),   # reaches rho_min: hard pseudo-labels
    Case("freematch"),
    Case("freematch", {"ema_momentum": 0.7}),   # thresholds that move within the run
    Case("softmatch", {"distribution_alignment": True}),
    Case("softmatch", {"distribution_alignment": True, "ema_momentum": 0.7}),
    Case("softmatch", {"distribution_alignment": True}, wrong={"distribution_alignment": False}),
]


# ---- our side -----------------------------------------------------------------------------------
def tiny_network(batchnorm: bool, seed: int) -> Network:
    """Our Network around the modules of semilearn's side's TinyNet: the same state_dict keys."""
    torch.manual_seed(seed)
    theirs = semilearn_side.TinyNet(NUM_CLASSES, **NETWORK, batchnorm=batchnorm)
    with torch.no_grad():
        theirs.classifier.weight.mul_(LOGIT_SCALE)
    return Network(Features(*theirs.backbone, num_features=NETWORK["width"]), theirs.classifier)


def random_batch(generator: torch.Generator, views, step: int) -> StepBatch:
    """Random 2x4x4 'images' for every view; unlabeled indices walk through the unlabeled set."""
    images = lambda n: torch.randn(n, NETWORK["channels"], 4, 4, generator=generator)
    labels = lambda n: torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    batch = StepBatch(labeled=Side([images(BATCH) for _ in views.labeled], labels(BATCH),
                                   torch.arange(BATCH)))
    if views.unlabeled:
        indices = (torch.arange(BATCH * MU) + step * BATCH * MU) % NUM_UNLABELED
        batch.unlabeled = Side([images(BATCH * MU) for _ in views.unlabeled], labels(BATCH * MU), indices)
    return batch


def semilearn_batch(batch: StepBatch, reference: Reference) -> dict[str, Tensor]:
    named = {"x_lb": batch.labeled.views[0], "y_lb": batch.labeled.labels, "idx_lb": batch.labeled.indices}
    if batch.unlabeled is not None:
        named.update(zip(reference.unlabeled, batch.unlabeled.views, strict=False))
        named.update(idx_ulb=batch.unlabeled.indices, y_ulb=batch.unlabeled.labels)
    return named


def our_step(algorithm, network, teacher, batch: StepBatch, step: int, reference: Reference) -> dict:
    network.zero_grad(set_to_none=True)
    ctx = StepContext(network=network, step=step, generator=torch.Generator().manual_seed(step),
                      teacher=teacher, host_generator=torch.Generator().manual_seed(step))
    calls = {quantity: source for quantity, source in reference.ours.items() if source[0] == "call"}
    resolve = lambda where: algorithm if where == "algorithm" else importlib.import_module(where)
    with semilearn_side.recording(calls, resolve) as recorded:
        output = algorithm.training_step(ctx, batch)
    output.loss.backward()
    record = {"loss": output.loss.detach().clone(), **recorded}
    record.update({quantity: output.stats[source[1]].detach().clone()
                   for quantity, source in reference.ours.items() if source[0] == "stat"})
    record.update(semilearn_side.network_record(network))
    for name in reference.state:   # state our setting does not keep (wrong cases) stays missing
        with contextlib.suppress(AttributeError):
            record[f"state {name}"] = semilearn_side.attribute_path(algorithm, name).clone()
    return record


def sgd_step(network: Network, teacher: Network | None) -> None:
    """Move the weights (and Mean Teacher's EMA) so that each step starts somewhere new."""
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.grad is not None:
                parameter.sub_(LEARNING_RATE * parameter.grad)
        if teacher is not None:
            for average, parameter in zip(teacher.parameters(), network.parameters(), strict=True):
                average.mul_(0.9).add_(0.1 * parameter)


def run_ours(case: Case, steps: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Our algorithm's records, step by step, and the problem semilearn's side replays."""
    reference = REFERENCES[case.name]
    params = {**PARAMS[case.name], **case.setting}
    facts = DataFacts(num_classes=NUM_CLASSES, num_labeled=BATCH, num_unlabeled=NUM_UNLABELED,
                      labeled_class_counts=(1,) * NUM_CLASSES)
    algorithm = build_algorithm(case.name, {**params, **case.wrong}, facts=facts, total_steps=TOTAL_STEPS)
    network = tiny_network(case.batchnorm, seed)
    teacher = copy.deepcopy(network).requires_grad_(False) if algorithm.needs_teacher else None
    reference.prepare(algorithm, params, case.start)
    generator, records, problem_steps = torch.Generator().manual_seed(seed + 1), [], []
    first = reference.first_step(params)
    for step in range(first, first + steps):
        batch = random_batch(generator, algorithm.views_at(step), step)
        problem_steps.append({"iteration": reference.iteration(step, params),
                              "batch": semilearn_batch(batch, reference),
                              "weights": copy.deepcopy(network.state_dict()),
                              "teacher": None if teacher is None else copy.deepcopy(teacher.state_dict())})
        records.append(our_step(algorithm, network, teacher, batch, step, reference))
        sgd_step(network, teacher)
    arguments = {"num_classes": NUM_CLASSES, "num_train_iter": TOTAL_STEPS,
                 "ulb_loss_ratio": params.get("lambda_u", 1.0), **reference.arguments(params)}
    problem = {"algorithm": reference.semilearn, "arguments": arguments, "steps": problem_steps,
               "attributes": reference.attributes(params, case.start), "sources": reference.theirs,
               "state": reference.state, "network": {**NETWORK, "batchnorm": case.batchnorm}}
    return problem, records


# ---- the comparison -----------------------------------------------------------------------------
def difference(ours: Tensor, theirs: Tensor) -> float:
    """The largest |ours - theirs| / max(1, |theirs|); hard labels against one-hot rows compare as
    rows; a shape mismatch is infinite."""
    if ours.dim() == theirs.dim() + 1 and not theirs.is_floating_point():
        theirs = torch.nn.functional.one_hot(theirs, ours.shape[-1])
    elif theirs.dim() == ours.dim() + 1 and not ours.is_floating_point():
        ours = torch.nn.functional.one_hot(ours, theirs.shape[-1])
    if ours.shape != theirs.shape:
        return float("inf")
    ours, theirs = ours.double(), theirs.double()
    return float(((ours - theirs).abs() / theirs.abs().clamp(min=1)).max()) if ours.numel() else 0.0


@dataclass
class Comparison:
    largest: float = 0.0
    where: str = ""                 # the quantity and step of the largest difference
    quantities: int = 0             # per step
    one_sided: tuple = ()           # quantities only one side has
    mask_mean: float | None = None

    @property
    def exact(self) -> bool:
        return self.largest <= TOLERANCE and not self.one_sided


def compare(ours: list[dict], theirs: list[dict]) -> Comparison:
    """Every quantity of every step (each step records the same quantities)."""
    both = set(ours[0]) & set(theirs[0])
    one_sided = [f"{name} (ours only)" for name in sorted(set(ours[0]) - both)]
    one_sided += [f"{name} (semilearn only)" for name in sorted(set(theirs[0]) - both)]
    result = Comparison(quantities=len(both), one_sided=tuple(one_sided))
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for quantity in sorted(both):
            found = difference(a[quantity], b[quantity])
            if found > result.largest or not result.where:
                result.largest, result.where = found, f"{quantity} at step {index}"
    if "mask" in ours[0]:
        result.mask_mean = float(torch.cat([record["mask"].float() for record in ours]).mean())
    return result


def verdict(case: Case, result: Comparison, steps: int) -> tuple[str, bool]:
    """The case's line, and whether it came out as its table entry expects."""
    found = f"largest difference {result.largest:.1e} in {result.where}" + (
        f"; only one side has {', '.join(result.one_sided)}" if result.one_sided else "")
    if result.exact:
        mask = "" if result.mask_mean is None else f", mask mean {result.mask_mean:.2f}"
        where = f" in {result.where}" if result.largest > 0 else ""
        summary = (f"largest difference {result.largest:.1e}{where} ({result.quantities} quantities "
                   f"x {steps} steps{mask})")
        if case.wrong:
            return f"NO DIFFERENCE FOUND with a wrong setting: {summary}", False
        if case.known:
            return f"now exact (drop `known` from its case): {summary}", False
        return f"OK  {summary}", True
    if case.wrong:
        return f"differs, as a wrong setting must: {found}", True
    if case.known:
        return f"NOT EXACT, no parameter names it: {found}. Why: {case.known}", True
    return f"NOT EXACT: {found}", False


def wrong_case(words: list[str]) -> Case:
    """`--wrong ALGORITHM KEY=VALUE ...`: the algorithm's first exact case, with these values
    (YAML) on our side only."""
    name, *assignments = words
    base = next((case for case in CASES if case.name == name and not case.wrong and not case.known), None)
    if base is None or not assignments:
        sys.exit(f"--wrong: give an algorithm with an exact case ({sorted({c.name for c in CASES})}) "
                 f"and at least one KEY=VALUE")
    wrong = {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in assignments)}
    return Case(name, base.setting, wrong=wrong, start=base.start, batchnorm=base.batchnorm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", type=Path, default=semilearn_side.DEFAULT_ENV,
                        help="semilearn's environment (made if missing or stale)")
    parser.add_argument("--semilearn", default="semilearn==0.3.2", help="requirement or wheel")
    parser.add_argument("--steps", type=int, default=12, help="steps per case")
    parser.add_argument("--only", nargs="*", help="these algorithms only")
    parser.add_argument("--wrong", nargs="+", metavar="ALGORITHM KEY=VALUE",
                        help="add a case with these hyperparameters on our side only: it must differ")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [case for case in CASES if not args.only or case.name in args.only]
    cases += [wrong_case(args.wrong)] if args.wrong else []
    python = semilearn_side.semilearn_python(args.env, args.semilearn)
    runs = [run_ours(case, args.steps) for case in cases]
    theirs = semilearn_side.run_semilearn(python, [problem for problem, _ in runs])
    print(f"semilearn 0.3.2 ({args.env}) against ours, torch {torch.__version__}, {args.steps} "
          f"steps per case, tolerance {TOLERANCE:g}", flush=True)
    width = max(len(case.label) for case in cases)
    as_expected = 0
    for case, (_, ours), reference in zip(cases, runs, theirs, strict=True):
        line, expected = verdict(case, compare(ours, reference), args.steps)
        print(f"{case.label:<{width}}  {line}", flush=True)
        as_expected += expected
    print(f"{as_expected} of {len(cases)} cases as expected")
    sys.exit(0 if as_expected == len(cases) else 1)


if __name__ == "__main__":
    main()
