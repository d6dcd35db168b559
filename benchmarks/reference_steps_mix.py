"""Check MixMatch, ReMixMatch and CRMatch against semilearn 0.3.2's own train_step, step by step.

For each algorithm: one network (WRN-28-2 with the algorithm's heads), two copies with the same
weights; semilearn's `train_step` runs on one (its own file, with its own losses, hooks, MixUp and
BatchNorm controller: nothing of it is copied here), ours on the other, on the same images. The
random draws are made to agree: semilearn's MixUp draws from numpy's and torch's global generators,
which are seeded before its step, and our MixUp is handed those lambda and permutation; the
rotations ours draws from its step generator are applied to semilearn's input with torchvision's
`rotate`, as semilearn's data loader does. Several steps in a row (the ramp and the distribution
alignment move). Reported: the largest difference of the loss, of each loss term, of every
gradient, of the BatchNorm running statistics after the step, and of the state (ReMixMatch's
p_model; CRMatch's mask), with a verdict at 1e-6.

    pip download semilearn==0.3.2 --no-deps -d /tmp/ref && unzip -q /tmp/ref/*.whl -d /tmp/ref
    uv run python benchmarks/reference_steps_mix.py --semilearn /tmp/ref/semilearn
    uv run python benchmarks/reference_steps_mix.py --semilearn /tmp/ref/semilearn --wrong

`--wrong` runs ours with a wrong setting (T 0.45 for MixMatch and ReMixMatch, tau 0.9 for
CRMatch) to show that a difference is reported. CRMatch's feature head takes the pooled features
in both (semilearn's WRN form takes the flattened 8x8 map: ssl/semisup/algorithms/crmatch.py).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm, mixmatch, remixmatch
from semisup.catalog import DATASETS
from semisup.data.modality import DataFacts
from semisup.models import build_network

from pipeline.config import default_params

TOLERANCE = 1e-6
NUM_CLASSES, BATCH = 10, 4


class Registry:
    def register(self, name):
        return lambda cls: cls


def install_semilearn(root: Path) -> None:
    """Import semilearn's algorithm files without its package imports (datasets, loggers)."""
    def package(name: str, path: Path, **attributes) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        module.__dict__.update(attributes)
        sys.modules[name] = module
        return module

    package("semilearn", root)
    package("semilearn.core", root / "core", AlgorithmBase=object, ImbAlgorithmBase=object)
    hooks = package("semilearn.core.hooks", root / "core" / "hooks")
    hooks.Hook = importlib.import_module("semilearn.core.hooks.hook").Hook
    misc = ast.parse((root / "core" / "utils" / "misc.py").read_text())
    controller = [node for node in misc.body if getattr(node, "name", "") == "Bn_Controller"]
    namespace = {"nn": nn, "torch": torch}
    exec(compile(ast.Module(controller, []), "semilearn/core/utils/misc.py", "exec"), namespace)
    package("semilearn.core.utils", root / "core" / "utils", ALGORITHMS=Registry(),
            get_data_loader=None, Bn_Controller=namespace["Bn_Controller"])
    package("semilearn.algorithms", root / "algorithms")


class AsReference(nn.Module):
    """Our network as semilearn's algorithms call theirs: a dict of logits, features and heads."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x, use_rot=False):
        output = self.network(x, want=tuple(self.network.heads))
        result = {"logits": output.logits, "feat": output.features}
        names = {"rotation": "logits_rot", "feature_distance": "logits_ds"}
        result.update({names[key]: value for key, value in output.heads.items()})
        return result


def reference_self(name: str, model: nn.Module, params: dict, total: int, labeled_prior: np.ndarray):
    """The attributes semilearn's train_step reads from its algorithm object."""
    criterions = importlib.import_module("semilearn.core.criterions")
    hooks = importlib.import_module("semilearn.algorithms.hooks")
    state = types.SimpleNamespace(
        model=model, bn_controller=sys.modules["semilearn.core.utils"].Bn_Controller(),
        amp_cm=contextlib.nullcontext, ce_loss=criterions.ce_loss,
        consistency_loss=criterions.consistency_loss, compute_prob=lambda x: torch.softmax(x, -1),
        process_out_dict=lambda **kw: kw, process_log_dict=lambda **kw: kw, it=0,
        num_train_iter=total, num_classes=NUM_CLASSES, distributed=False, world_size=1,
        mixup_manifold=False, use_cat=True, gpu=None)
    if name == "crmatch":
        state.hooks_dict = {"MaskingHook": hooks.FixedThresholdingHook()}
        state.p_cutoff, state.use_rot = params["tau"], True
    else:
        state.T, state.mixup_alpha = params["T"], params["mixup_alpha"]
        state.unsup_warm_up, state.lambda_u = params["rampup_fraction"], params["lambda_u"]
    if name == "remixmatch":
        state.hooks_dict = {"DistAlignHook": hooks.DistAlignEMAHook(
            num_classes=NUM_CLASSES, p_target_type="gt", p_target=labeled_prior)}
        state.lambda_kl, state.lambda_rot = params["lambda_pre_mixup"], params["lambda_rot"]
        state.use_rot = True
    state.call_hook = lambda fn, hook, **kw: getattr(state.hooks_dict[hook], fn)(state, **kw)
    return state


MU = {"mixmatch": 1, "remixmatch": 1, "crmatch": 2}
REFERENCE_FILES = {"mixmatch": "mixmatch.mixmatch.MixMatch", "remixmatch": "remixmatch.remixmatch.ReMixMatch",
                   "crmatch": "crmatch.crmatch.CRMatch"}


def reference_class(name: str):
    module, cls = REFERENCE_FILES[name].rsplit(".", 1)
    return getattr(importlib.import_module(f"semilearn.algorithms.{module}"), cls)


def make_batch(algorithm, generator: torch.Generator) -> StepBatch:
    images = lambda n: torch.randn(n, 3, 32, 32, generator=generator)
    labels = lambda n: torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    num_unlabeled = BATCH * MU[algorithm.name]
    return StepBatch(Side([images(BATCH)], labels(BATCH), torch.arange(BATCH)),
                     Side([images(num_unlabeled) for _ in algorithm.views.unlabeled],
                          labels(num_unlabeled), torch.arange(num_unlabeled)))


def reference_inputs(name: str, batch: StepBatch, step_generator: torch.Generator) -> dict:
    """semilearn's train_step arguments, rotations made as its data loaders make them."""
    (x_lb,), unlabeled = batch.labeled.views, batch.unlabeled.views
    inputs = {"x_lb": x_lb, "y_lb": batch.labeled.labels, "x_ulb_w": unlabeled[0]}
    if name == "mixmatch":
        inputs["x_ulb_s"] = unlabeled[1]   # its "strong" view is a second weak view
    elif name == "remixmatch":
        turns = torch.randint(4, (len(unlabeled[1]),), generator=copy.deepcopy(step_generator))
        rotated = torch.stack([TF.rotate(image, 90 * int(k))
                               for image, k in zip(unlabeled[1], turns, strict=True)])
        inputs.update(x_ulb_s_0=unlabeled[1], x_ulb_s_1=unlabeled[2], x_ulb_s_0_rot=rotated,
                      rot_v=turns)
    else:
        source = unlabeled[2][:BATCH]
        labels = torch.tensor([0, 1, 2, 3]).repeat(BATCH, 1)   # RotNet's labels, batched
        inputs.update(x_ulb_s=unlabeled[1],
                      x_ulb_rot=torch.cat([TF.rotate(source, angle) for angle in (0, 90, 180, 270)]),
                      rot_v=labels.transpose(1, 0).contiguous().view(-1))
    return inputs


def seeded_mixup(name: str, params: dict, num_rows: int, seed: int):
    """Seed the global generators semilearn's MixUp draws from; return what it will draw."""
    if name == "crmatch":
        return None
    np.random.seed(seed)
    torch.manual_seed(seed)
    lam = np.random.beta(params["mixup_alpha"], params["mixup_alpha"])
    permutation = torch.randperm(num_rows)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return max(lam, 1 - lam), permutation


def largest(a, b) -> float:
    as_double = lambda x: torch.as_tensor(x, dtype=torch.float64)
    return (as_double(a) - as_double(b)).abs().max().item()


def our_step(ours, network, batch, step, step_generator, drawn):
    """Our step and its backward, MixUp handed semilearn's draws."""
    context = StepContext(network, step, step_generator, host_generator=torch.Generator())
    with contextlib.ExitStack() as stack:
        for module in (mixmatch, remixmatch) if drawn else ():
            stack.enter_context(mock.patch.object(module, "mixup_draw", lambda *a: drawn))
        output = ours.training_step(context, batch)
    output.loss.backward()
    return output


def compare(name: str, wrong: bool, steps: int = 3) -> list[str]:
    params = dict(default_params()["algorithms"][name])
    counts = tuple(int(c) for c in torch.arange(NUM_CLASSES) % 3 + 1)   # an uneven labeled prior
    facts = DataFacts(NUM_CLASSES, sum(counts), 64, counts)
    torch.manual_seed(0)
    network = build_network("wrn_28_2", NUM_CLASSES, DATASETS["cifar10"].inputs,
                            **default_params()["models"]["wrn_28_2"])
    params.update({"tau": 0.12} if name == "crmatch" else {})   # the untrained WRN is unsure
    mistake = ({"tau": 0.15} if name == "crmatch" else {"T": 0.45}) if wrong else {}
    ours = build_algorithm(name, {**params, **mistake}, facts=facts, total_steps=8)
    network.add_heads(ours.heads(network.num_features)).train()
    theirs_network = copy.deepcopy(network)
    prior = np.array(counts) / np.array(counts).sum()
    state = reference_self(name, AsReference(theirs_network), params, 8, prior)
    generator, step_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    lines = []
    for step in range(steps):
        batch = make_batch(ours, generator)
        inputs = reference_inputs(name, batch, step_generator)
        num_rows = BATCH + sum(len(v) for v in batch.unlabeled.views)
        drawn = seeded_mixup(name, params, num_rows, 100 + step)
        network.zero_grad(), theirs_network.zero_grad()
        output = our_step(ours, network, batch, step, step_generator, drawn)
        state.it = step
        with mock.patch.object(torch.Tensor, "cuda", lambda tensor, *a, **k: tensor):
            out, log = reference_class(name).train_step(state, **inputs)
        out["loss"].backward()
        lines.append(report(name, step, ours, output, out, log, network, theirs_network, state))
        with torch.no_grad():   # the same SGD step for both: the next step starts from equal weights
            for parameter in network.parameters():
                if parameter.grad is not None:
                    parameter -= 0.05 * parameter.grad
        theirs_network.load_state_dict(network.state_dict())
    return lines


def report(name, step, ours, output, out, log, network, theirs_network, state) -> str:
    differences = {"loss": largest(output.loss.detach(), out["loss"].detach()),
                   "loss_sup": largest(output.stats["loss_sup"], log["sup_loss"]),
                   "loss_unsup": largest(output.stats["loss_unsup"], log["unsup_loss"])}
    pairs = list(zip(network.parameters(), theirs_network.parameters(), strict=True))
    differences["gradients"] = max(largest(0 if a.grad is None else a.grad, 0 if b.grad is None else b.grad)
                                   for a, b in pairs)
    differences["batchnorm buffers"] = max(largest(a, b) for a, b in
                                           zip(network.buffers(), theirs_network.buffers(), strict=True))
    if name == "remixmatch":
        differences["p_model"] = largest(ours.alignment.p_model, state.hooks_dict["DistAlignHook"].p_model)
    if name == "crmatch":
        differences["mask rate"] = largest(output.stats["mask_rate"], log["util_ratio"])
    verdict = "same" if max(differences.values()) <= TOLERANCE else "DIFFERENT"
    detail = ", ".join(f"{key} {value:.1e}" for key, value in differences.items())
    dtype = output.loss.dtype == out["loss"].dtype
    return (f"{name:10s} step {step}: {verdict} (largest differences: {detail}; "
            f"loss {output.loss.item():.6f}, same dtype {dtype})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--semilearn", type=Path, required=True, help="semilearn 0.3.2's package folder")
    parser.add_argument("--wrong", action="store_true", help="run ours with a wrong setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_semilearn(args.semilearn.resolve())
    for name in ("mixmatch", "remixmatch", "crmatch"):
        print("\n".join(compare(name, args.wrong)), flush=True)


if __name__ == "__main__":
    main()
