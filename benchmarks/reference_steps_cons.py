"""Check Pi-model, VAT, AdaMatch, DeFixMatch and the fully supervised baseline against semilearn
0.3.2's own train_step, step by step.

For each algorithm: one WRN-28-2 (semilearn's variant), two copies with the same weights;
semilearn's `train_step` runs on one (its own file, with its own losses, hooks and BatchNorm
controller: nothing of it is copied here), ours on the other, on the same CIFAR-shaped images.
Several steps in a row (the ramps and AdaMatch's running distributions move): after each, plain
SGD updates our copy and semilearn's copy takes its weights and BatchNorm statistics, so that
every step is compared from the same weights (VAT's float32 direction is rounding noise, which a
difference of 1e-8 in the weights changes completely: ALGORITHMS.md). VAT's random probe:
semilearn draws it from torch's global generator, which is seeded before its step with the seed
of our step generator (the same numbers on the CPU). Reported per step: the largest difference
of the loss, of each loss term and statistic semilearn logs, of the masks and pseudo-labels its
hooks return, of every gradient, of the BatchNorm running statistics after the step and of the
state (AdaMatch's p_model and p_target), relative to semilearn's value where that is above 1,
with a verdict at 1e-6.

    pip download semilearn==0.3.2 --no-deps -d /tmp/ref && unzip -q /tmp/ref/*.whl -d /tmp/ref
    uv run python benchmarks/reference_steps_cons.py --semilearn /tmp/ref/semilearn
    uv run python benchmarks/reference_steps_cons.py --semilearn /tmp/ref/semilearn --wrong

`--wrong` runs ours with one hyperparameter off (see WRONG) to show that a difference is reported.
The CPU only (semilearn's VAT moves its probe with .cuda(), made a no-op here).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import io
import sys
import types
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.catalog import DATASETS
from semisup.data.modality import DataFacts
from semisup.models import build_network

from pipeline.config import default_params

TOLERANCE = 1e-6
NUM_CLASSES, BATCH, TOTAL_STEPS, STEPS, LR = 10, 8, 8, 3, 0.1
MU = {"pimodel": 1, "vat": 1, "adamatch": 2, "defixmatch": 2, "fullysupervised": 0}
REFERENCE = {"pimodel": "pimodel.PiModel", "vat": "vat.VAT", "adamatch": "adamatch.AdaMatch",
             "defixmatch": "defixmatch.DeFixMatch", "fullysupervised": "fullysupervised.FullySupervised"}
# The classifier's initial weights scaled up: confidences from about 0.4 to 1, so that the
# published thresholds select some samples and not others.
LOGIT_SCALE = 30.0
WRONG = {"pimodel": {"lambda_u": 9.0}, "vat": {"eps": 5.0}, "adamatch": {"ema_momentum": 0.99},
         "defixmatch": {"lambda_u": 0.4}, "fullysupervised": None}


def package(name: str, path: Path | None = None, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def install_semilearn(root: Path) -> None:
    """Make semilearn's algorithm files importable without its package imports (datasets,
    loggers, the full AlgorithmBase): the train_steps read their collaborators from `self`."""
    class Registry(dict):
        def register(self, name):
            return lambda cls: cls

    package("ruamel")
    package("ruamel.yaml")
    package("torch.utils.tensorboard", SummaryWriter=None)
    package("semilearn", root)
    package("semilearn.core", root / "core", AlgorithmBase=object)
    package("semilearn.core.algorithmbase", AlgorithmBase=object)
    package("semilearn.core.hooks", root / "core" / "hooks",
            Hook=load_file("semilearn.core.hooks.hook", root / "core" / "hooks" / "hook.py").Hook)
    misc = load_file("semilearn.core.utils.misc", root / "core" / "utils" / "misc.py")
    package("semilearn.core.utils", root / "core" / "utils", ALGORITHMS=Registry(),
            Bn_Controller=misc.Bn_Controller)
    package("semilearn.algorithms", root / "algorithms")


class AsReference(nn.Module):
    """Our network as semilearn's algorithms call theirs: a dict of logits and features."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        output = self.network(x)
        return {"logits": output.logits, "feat": output.features}


def quietly(make, **kwargs):
    """semilearn's hooks print when made."""
    with contextlib.redirect_stdout(io.StringIO()):
        return make(**kwargs)


def reference_algorithm(name: str, model: nn.Module, params: dict):
    """semilearn's algorithm object, with the attributes its train_step reads set by hand; every
    hook call is recorded (masks, pseudo-labels)."""
    module, cls = REFERENCE[name].rsplit(".", 1)
    algorithm = object.__new__(getattr(importlib.import_module(f"semilearn.algorithms.{module}"), cls))
    criterions = importlib.import_module("semilearn.core.criterions")
    hooks = importlib.import_module("semilearn.algorithms.hooks")
    vars(algorithm).update(
        model=model, bn_controller=sys.modules["semilearn.core.utils"].Bn_Controller(),
        amp_cm=contextlib.nullcontext, ce_loss=criterions.ce_loss, it=0,
        consistency_loss=criterions.consistency_loss, num_train_iter=TOTAL_STEPS,
        process_out_dict=lambda **kw: kw, process_log_dict=lambda **kw: kw, use_cat=True,
        distributed=False, world_size=1, gpu=None, lambda_u=params.get("lambda_u"),
        unsup_warm_up=params.get("rampup_fraction"), p_cutoff=params.get("tau"), T=0.5,
        use_hard_label=True, hooks_dict={}, calls=[])
    if name == "vat":
        vars(algorithm).update(vat_eps=params["eps"], vat_embed=False,
                               lambda_ent=params["lambda_entropy"])
    if name == "adamatch":
        adamatch = importlib.import_module("semilearn.algorithms.adamatch")
        algorithm.hooks_dict = {
            "PseudoLabelingHook": hooks.PseudoLabelingHook(),
            "DistAlignHook": quietly(hooks.DistAlignEMAHook, num_classes=NUM_CLASSES,
                                     momentum=params["ema_momentum"], p_target_type="model"),
            "MaskingHook": adamatch.AdaMatchThresholdingHook()}
    if name == "defixmatch":
        algorithm.hooks_dict = {"PseudoLabelingHook": hooks.PseudoLabelingHook(),
                                "MaskingHook": hooks.FixedThresholdingHook()}

    def call_hook(method, hook, **kwargs):
        result = getattr(algorithm.hooks_dict[hook], method)(algorithm, **kwargs)
        algorithm.calls.append((method, result))
        return result
    algorithm.call_hook = call_hook
    algorithm.compute_prob = lambda logits: torch.softmax(logits, dim=-1)
    algorithm.registered_hook = lambda hook: hook in algorithm.hooks_dict
    return algorithm


def make_batch(name: str, views, generator: torch.Generator) -> StepBatch:
    images = lambda n: torch.randn(n, 3, 32, 32, generator=generator)
    labels = lambda n: torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    batch = StepBatch(Side([images(BATCH) for _ in views.labeled], labels(BATCH), torch.arange(BATCH)))
    if views.unlabeled:
        size = BATCH * MU[name]
        batch.unlabeled = Side([images(size) for _ in views.unlabeled], labels(size), torch.arange(size))
    return batch


def reference_inputs(name: str, batch: StepBatch) -> dict:
    """semilearn's train_step arguments (Pi-model's x_ulb_s is a second weak view there too)."""
    inputs = {"x_lb": batch.labeled.views[0], "y_lb": batch.labeled.labels}
    if name == "defixmatch":
        inputs["x_lb_s"] = batch.labeled.views[1]
    if batch.unlabeled is not None:
        inputs["x_ulb_w"] = batch.unlabeled.views[0]
        if len(batch.unlabeled.views) > 1:
            inputs["x_ulb_s"] = batch.unlabeled.views[1]
    return inputs


def largest(theirs, ours) -> float:
    """The largest difference, relative to semilearn's value where that is above 1 (float32 keeps
    about 7 digits: a loss of 16 is known to 2e-6); a gradient that is None counts as zeros."""
    if theirs is None or ours is None:
        return 0.0 if theirs is None and ours is None else float("inf")
    theirs, ours = (torch.as_tensor(x, dtype=torch.float64) for x in (theirs, ours))
    return ((theirs - ours).abs() / theirs.abs().clamp(min=1.0)).max().item()


# Our statistic for each value semilearn logs.
LOGGED = {"sup_loss": "loss_sup", "unsup_loss": "loss_unsup", "loss_entmin": "loss_entropy",
          "anti_unsup_loss": "loss_anti", "util_ratio": "mask_rate",
          "util_ratio_lb": "mask_rate_labeled"}


def hook_differences(name: str, theirs, ours, selected: dict) -> dict[str, float]:
    """The masks and pseudo-labels semilearn's hooks returned (its first masking and labelling
    calls: the unlabeled batch's) against ours, and AdaMatch's running distributions."""
    found = {}
    if name in ("adamatch", "defixmatch"):
        masks = [result for method, result in theirs.calls if method == "masking"]
        labels = [result for method, result in theirs.calls if method == "gen_ulb_targets"]
        found["mask"] = largest(masks[0], selected["mask"])
        found["pseudo_labels"] = largest(labels[0], selected["pseudo_labels"])
    if name == "adamatch":
        hook = theirs.hooks_dict["DistAlignHook"]
        found["p_model"] = largest(hook.p_model, ours.alignment.p_model)
        found["p_target"] = largest(hook.p_target, ours.alignment.p_target)
    return found


def one_step(name, theirs, ours, network, theirs_network, batch, step) -> dict[str, float]:
    theirs.it, theirs.calls = step, []
    torch.manual_seed(1000 + step)   # semilearn's VAT probe: torch's global generator
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
        out, log = theirs.train_step(**reference_inputs(name, batch))
    out["loss"].backward()
    context = StepContext(network, step, torch.Generator().manual_seed(1000 + step),
                          host_generator=torch.Generator())
    selected = {}
    module = sys.modules[type(ours).__module__]
    real = getattr(module, "selection_stats", None)

    def recorded(mask, pseudo_labels, true_labels):
        selected.update(mask=mask, pseudo_labels=pseudo_labels)
        return real(mask, pseudo_labels, true_labels)
    with mock.patch.object(module, "selection_stats", recorded) if real else contextlib.nullcontext():
        output = ours.training_step(context, batch)
    output.loss.backward()
    found = {"loss": largest(out["loss"].detach(), output.loss.detach())}
    found.update({key: largest(value, output.stats[LOGGED[key]])
                  for key, value in log.items() if key in LOGGED})
    found.update(hook_differences(name, theirs, ours, selected))
    ours_parameters = dict(network.named_parameters())
    found["gradients"] = max(largest(p.grad, ours_parameters[key].grad)
                             for key, p in theirs_network.named_parameters())
    ours_buffers = dict(network.named_buffers())
    found["batchnorm_statistics"] = max(largest(b, ours_buffers[key])
                                        for key, b in theirs_network.named_buffers())
    return found


def sgd(network: nn.Module) -> None:
    """Plain SGD on the step's gradients, which it clears."""
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.grad is not None:
                parameter -= LR * parameter.grad
                parameter.grad = None


def compare(name: str, wrong: bool) -> list[str]:
    params = default_params()["algorithms"][name]
    ours = build_algorithm(name, {**params, **((WRONG[name] or {}) if wrong else {})},
                           facts=DataFacts(NUM_CLASSES, 40, 64, (4,) * NUM_CLASSES),
                           total_steps=TOTAL_STEPS)
    torch.manual_seed(0)
    network = build_network("wrn_28_2", NUM_CLASSES, DATASETS["cifar10"].inputs,
                            **default_params()["models"]["wrn_28_2"]).train()
    with torch.no_grad():
        network.classifier.weight.mul_(LOGIT_SCALE)
    theirs_network = copy.deepcopy(network)
    theirs = reference_algorithm(name, AsReference(theirs_network), params)
    generator, lines = torch.Generator().manual_seed(1), []
    for step in range(STEPS):
        batch = make_batch(name, ours.views, generator)
        found = one_step(name, theirs, ours, network, theirs_network, batch, step)
        worst = max(found.values())
        verdict = "same" if worst <= TOLERANCE else "DIFFERENT"
        lines.append(f"{name:16s} step {step}: {verdict} (largest difference {worst:.2e}: "
                     + ", ".join(f"{k} {v:.1e}" for k, v in found.items()) + ")")
        sgd(network)   # then semilearn's copy takes our weights: each step starts from the same
        theirs_network.load_state_dict(network.state_dict())
        theirs_network.zero_grad(set_to_none=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--semilearn", type=Path, required=True,
                        help="the folder of semilearn 0.3.2's package (the one holding core/)")
    parser.add_argument("--wrong", action="store_true", help="ours with one hyperparameter off")
    parser.add_argument("--algorithms", nargs="*", default=list(REFERENCE))
    args = parser.parse_args()
    install_semilearn(args.semilearn)
    torch.set_num_threads(1)
    for name in args.algorithms:
        if args.wrong and WRONG[name] is None:
            continue
        print("\n".join(compare(name, args.wrong)), flush=True)


if __name__ == "__main__":
    main()
