"""Check ssl-repro's algorithms against semilearn 0.3.2's own code, step by step.

    uv run python benchmarks/reference_algorithms.py [--env DIR] [--steps 12] [--only NAME ...]

It makes (or reuses) a separate environment with semilearn 0.3.2 and this project's torch, numpy
and pillow (benchmarks/semilearn_side.py: `uv`, from uv's cache), then for every case of
benchmarks/reference_cases.py:

1. runs our algorithm (params.yaml's hyperparameters, with the case's settings) for `--steps`
   steps on a tiny network (conv, BatchNorm, ReLU, pool, linear, and the algorithm's heads) and
   random batches, taking an SGD step after each, and records each step's weights, batch, loss,
   loss terms, mask, pseudo-labels, gradients, BatchNorm buffers and running state;
2. runs semilearn's own algorithm class (its train_step, hooks and network wrapper,
   benchmarks/semilearn_side.py) in that environment on the same weights and batches, step by
   step, its own state carried over, its random draws made to agree with ours;
3. compares: every quantity of every step within TOLERANCE (absolute; relative above 1).

A case's `setting` names where we differ from semilearn on purpose (the schema documents it): we
run with semilearn's value there and print it. A case with `wrong` sets one of our hyperparameters
away from semilearn's on our side only: the comparison must report a difference. A case with
`known` differs in a way no parameter names: the output says so. The exit status is 1 if any case
does not come out as its table entry expects.

To add an algorithm: a `Reference` in reference_cases.REFERENCES and its lines in CASES.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.data.modality import DataFacts
from semisup.models import Network
from semisup.models.cnn import Features

from pipeline.config import default_params


def sibling(name: str):
    """A module of this folder (registered under its name: dataclasses look their module up)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


semilearn_side, reference_cases = sibling("semilearn_side"), sibling("reference_cases")
Case, Reference = reference_cases.Case, reference_cases.Reference
CASES, REFERENCES = reference_cases.CASES, reference_cases.REFERENCES
UDA_AS_SEMILEARN = reference_cases.UDA_AS_SEMILEARN
NUM_CLASSES, BATCH, MU = reference_cases.NUM_CLASSES, reference_cases.BATCH, reference_cases.MU
NUM_LABELED, NUM_UNLABELED = reference_cases.NUM_LABELED, reference_cases.NUM_UNLABELED
TOTAL_STEPS = reference_cases.TOTAL_STEPS

PARAMS = default_params()["algorithms"]
TOLERANCE = 1e-6
LEARNING_RATE = 0.1
NETWORK = dict(channels=2, width=8)
LOGIT_SCALE = 24.0  # the classifier's initial weights x this: confident and unconfident samples


# ---- our side -----------------------------------------------------------------------------------
def tiny_network(batchnorm: bool, seed: int, algorithm) -> Network:
    """Our Network around the modules of semilearn's side's TinyNet (the same state_dict keys),
    with the algorithm's heads, all drawn from `seed`."""
    torch.manual_seed(seed)
    theirs = semilearn_side.TinyNet(NUM_CLASSES, **NETWORK, batchnorm=batchnorm)
    with torch.no_grad():
        theirs.classifier.weight.mul_(LOGIT_SCALE)
    network = Network(Features(*theirs.backbone, num_features=NETWORK["width"]), theirs.classifier)
    return network.add_heads(algorithm.heads(NETWORK["width"]))


def random_batch(generator: torch.Generator, views, step: int, size: int) -> StepBatch:
    """Random 2 x size x size 'images' for every view; the labeled and unlabeled indices walk
    through their sets."""
    images = lambda n: torch.randn(n, NETWORK["channels"], size, size, generator=generator)
    labels = lambda n: torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    batch = StepBatch(labeled=Side([images(BATCH) for _ in views.labeled], labels(BATCH),
                                   (torch.arange(BATCH) + step * BATCH) % NUM_LABELED))
    if views.unlabeled:
        indices = (torch.arange(BATCH * MU) + step * BATCH * MU) % NUM_UNLABELED
        batch.unlabeled = Side([images(BATCH * MU) for _ in views.unlabeled], labels(BATCH * MU), indices)
    return batch


def semilearn_batch(batch: StepBatch, reference: Reference, step: int) -> dict[str, Tensor]:
    named = dict(zip(reference.labeled, batch.labeled.views, strict=True))
    named.update(y_lb=batch.labeled.labels, idx_lb=batch.labeled.indices)
    if batch.unlabeled is not None:
        named.update(zip(reference.unlabeled, batch.unlabeled.views, strict=True))
        named.update(idx_ulb=batch.unlabeled.indices, y_ulb=batch.unlabeled.labels)
    return {**named, **reference.inputs(batch, step)}


def renamed(weights: dict, names: dict, backwards: bool = False) -> dict:
    """Parameter and buffer names ("grad NAME" in records) from ours to semilearn's, or back:
    each name's longest matching prefix in `names` replaced."""
    pairs = [(b, a) for a, b in names.items()] if backwards else list(names.items())
    pairs.sort(key=lambda pair: -len(pair[0]))

    def rename(key: str) -> str:
        kind, _, name = key.rpartition(" ")
        prefix = next((pair for pair in pairs if name.startswith(pair[0])), None)
        name = name if prefix is None else prefix[1] + name.removeprefix(prefix[0])
        return f"{kind} {name}" if kind else name
    return {rename(key): value for key, value in weights.items()}


def our_step(algorithm, network, teacher, batch: StepBatch, step: int, reference: Reference) -> dict:
    network.zero_grad(set_to_none=True)
    ctx = StepContext(network=network, step=step, generator=torch.Generator().manual_seed(step),
                      teacher=teacher, host_generator=torch.Generator().manual_seed(step))
    calls = {quantity: source for quantity, source in reference.ours.items() if source[0] == "call"}
    resolve = lambda where: algorithm if where == "algorithm" else importlib.import_module(where)
    with semilearn_side.recording(calls, resolve) as recorded, reference.draws(step):
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


def semilearn_arguments(case: Case, params: dict) -> dict:
    reference = REFERENCES[case.name]
    return {"num_classes": NUM_CLASSES, "num_train_iter": TOTAL_STEPS, "lb_dest_len": NUM_LABELED,
            "uratio": MU, "batch_size": BATCH, "ulb_loss_ratio": params.get("lambda_u", 1.0),
            **reference.arguments(params), **case.semilearn}


def run_ours(case: Case, steps: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Our algorithm's records, step by step, and the problem semilearn's side replays."""
    order = reference_cases.IN_SEMILEARN_ORDER[case.name] if case.semilearn_order else contextlib.nullcontext
    with order():
        return run_case(case, steps, seed)


def run_case(case: Case, steps: int, seed: int) -> tuple[dict, list[dict]]:
    reference = REFERENCES[case.name]
    params = {**PARAMS[case.name], **case.setting}
    arguments = semilearn_arguments(case, params)
    facts = DataFacts(num_classes=NUM_CLASSES, num_labeled=NUM_LABELED, num_unlabeled=NUM_UNLABELED,
                      labeled_class_counts=reference_cases.LABELED_CLASS_COUNTS)
    algorithm = build_algorithm(case.name, {**params, **case.wrong}, facts=facts, total_steps=TOTAL_STEPS)
    network = tiny_network(case.batchnorm, seed, algorithm)
    teacher = copy.deepcopy(network).requires_grad_(False) if algorithm.needs_teacher else None
    attributes = reference.prepare(algorithm, params, case.start)
    theirs = lambda weights: reference.weights(renamed(copy.deepcopy(weights), reference.names), arguments)
    generator, records, problem_steps = torch.Generator().manual_seed(seed + 1), [], []
    first = reference.first_step(params)
    for step in range(first, first + steps):
        batch = random_batch(generator, algorithm.views_at(step), step, reference.image_size)
        iteration = reference.iteration(step, params)
        problem_steps.append({"iteration": iteration, "seed": step,
                              "batch": semilearn_batch(batch, reference, step),
                              "attributes": reference.step_attributes(iteration, params),
                              "weights": theirs(network.state_dict()),
                              "teacher": None if teacher is None else theirs(teacher.state_dict())})
        record = our_step(algorithm, network, teacher, batch, step, reference)
        records.append(reference.ours_as_theirs(record, arguments))
        sgd_step(network, teacher)
    counts = reference_cases.LABELED_CLASS_COUNTS
    labeled_targets = [label for label, count in enumerate(counts) for _ in range(count)]
    problem = {"algorithm": reference.semilearn, "arguments": arguments, "steps": problem_steps,
               "attributes": attributes, "sources": reference.theirs, "state": reference.state,
               "network": {**NETWORK, "batchnorm": case.batchnorm}, "labeled_targets": labeled_targets}
    return problem, records


def run_semilearn(python: Path, cases: list[Case], problems: list[dict]) -> list[list[dict]]:
    """semilearn's records, step by step, with our names."""
    results = semilearn_side.run_semilearn(python, problems)
    return [[renamed(record, REFERENCES[case.name].names, backwards=True) for record in records]
            for case, records in zip(cases, results, strict=True)]


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


def compare(ours: list[dict], theirs: list[dict], leave_out: tuple[str, ...] = ()) -> Comparison:
    """Every quantity of every step (each step records the same quantities) but `leave_out`."""
    mine, yours = set(ours[0]) - set(leave_out), set(theirs[0]) - set(leave_out)
    both = mine & yours
    one_sided = [f"{name} (ours only)" for name in sorted(mine - both)]
    one_sided += [f"{name} (semilearn only)" for name in sorted(yours - both)]
    result = Comparison(quantities=len(both), one_sided=tuple(one_sided))
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for quantity in sorted(both):
            found = difference(a[quantity], b[quantity])
            if found > result.largest or not result.where:
                result.largest, result.where = found, f"{quantity} at step {index}"
    if "mask" in ours[0]:
        result.mask_mean = float(torch.cat([record["mask"].float() for record in ours]).mean())
    return result


def found(result: Comparison) -> str:
    return f"largest difference {result.largest:.1e} in {result.where}" + (
        f"; only one side has {', '.join(result.one_sided)}" if result.one_sided else "")


def verdict(case: Case, result: Comparison, steps: int, rest: Comparison | None = None) -> tuple[str, bool]:
    """The case's line, and whether it came out as its table entry expects. `rest`: the
    comparison without the quantities a known difference is confined to (case.known_in)."""
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
        return f"differs, as a wrong setting must: {found(result)}", True
    if rest is not None and not rest.exact:
        return f"NOT EXACT beyond its known difference ({', '.join(case.known_in)}): {found(rest)}", False
    if case.known:
        others = "" if rest is None else f"; the rest within {TOLERANCE:g} (largest {rest.largest:.1e})"
        return f"NOT EXACT, no parameter names it: {found(result)}{others}. Why: {case.known}", True
    return f"NOT EXACT: {found(result)}", False


def wrong_case(words: list[str]) -> Case:
    """`--wrong ALGORITHM KEY=VALUE ...`: the algorithm's first exact case, with these values
    (YAML) on our side only."""
    name, *assignments = words
    base = next((case for case in CASES if case.name == name and not case.wrong and not case.known), None)
    if base is None or not assignments:
        sys.exit(f"--wrong: give an algorithm with an exact case ({sorted({c.name for c in CASES})}) "
                 f"and at least one KEY=VALUE")
    wrong = {key: yaml.safe_load(value) for key, value in (a.split("=", 1) for a in assignments)}
    return Case(name, base.setting, wrong=wrong, start=base.start, semilearn=base.semilearn,
                batchnorm=base.batchnorm, semilearn_order=base.semilearn_order)


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
    theirs = run_semilearn(python, cases, [problem for problem, _ in runs])
    print(f"semilearn 0.3.2 ({args.env}) against ours, torch {torch.__version__}, {args.steps} "
          f"steps per case, tolerance {TOLERANCE:g}", flush=True)
    width = max(len(case.label) for case in cases)
    as_expected = 0
    for case, (_, ours), reference in zip(cases, runs, theirs, strict=True):
        rest = compare(ours, reference, case.known_in) if case.known_in else None
        line, expected = verdict(case, compare(ours, reference), args.steps, rest)
        print(f"{case.label:<{width}}  {line}", flush=True)
        as_expected += expected
    print(f"{as_expected} of {len(cases)} cases as expected")
    sys.exit(0 if as_expected == len(cases) else 1)


if __name__ == "__main__":
    main()
