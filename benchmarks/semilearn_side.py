"""semilearn 0.3.2's side of benchmarks/reference_algorithms.py: its environment, and its own
training steps on the problems that reference_algorithms.py writes.

The environment (`semilearn_python`) is separate from the project's: semilearn 0.3.2 without its
dependencies, and the torch, numpy and pillow of the project's environment at the same versions
(uv installs them from its cache). This file runs there as

    <semilearn env>/bin/python benchmarks/semilearn_side.py PROBLEMS.pt RESULTS.pt

and then imports torch, numpy and semilearn only. For each problem it builds semilearn's algorithm
class with semilearn's own __init__ (the algorithm's `init`, `set_model` with its own network
wrapper and heads, and `set_hooks`: its real hooks) on a minimal argument namespace. It skips
only what a training step never touches: the data sets (the labeled targets, which ReMixMatch's
hook reads, are given), the loaders and the optimizer. `Tensor.cuda` is the identity: the run is
on the CPU. Then, step by step, it loads the given weights, sets `it` (and the step's attributes,
such as `epoch`), seeds numpy's and torch's global generators with the step's seed (VAT's probe
and MixUp's draws come from them), calls the real `train_step` on the given batch and
backpropagates the loss that train_step returns. It records that loss, the loss terms (from
train_step's log_dict), what the named hooks and functions returned or were given (the mask, the
pseudo-labels), every gradient, the BatchNorm buffers and the running state.

reference_algorithms.py imports this file too: `TinyNet`, `recording` and `network_record` serve
both sides.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy
import torch
from torch import nn

# Modules that semilearn imports at package level only for things a training step never does. Each
# is replaced by a placeholder whose every attribute is an inert class: they are never called.
STUBS = {
    "semilearn.datasets": "data sets and samplers (torchvision, transformers, torchaudio)",
    "semilearn.nets": "network builders (timm, transformers)",
    "semilearn.nets.utils": "optimizer parameter groups",
    "wandb": "a logging hook", "aim": "a logging hook",
    "torch.utils.tensorboard": "logging (tensorboard is not installed)",
    "ruamel": "config files", "ruamel.yaml": "config files",
    "sklearn": "evaluation metrics", "sklearn.metrics": "evaluation metrics",
}
# The arguments AlgorithmBase.__init__ reads; the problem adds each algorithm's own.
COMMON_ARGUMENTS = dict(ema_m=0.999, epoch=1, num_eval_iter=1, num_log_iter=1, ulb_loss_ratio=1.0,
                        use_cat=True, amp=False, clip_grad=0, save_name="reference", save_dir="",
                        resume=False, gpu=None, rank=0, distributed=False, world_size=1,
                        use_pretrain=False, pretrain_path="", use_wandb=False, use_aim=False,
                        net="tiny", dataset="none")


class TinyNet(nn.Module):
    """Conv -> (BatchNorm2d) -> ReLU -> global average pool -> linear, with semilearn's network
    interface: an output dict, `only_feat`, `only_fc`, `num_features` and `extract` (a WRN's
    feature map when `feature_map`, else the pooled features, as its transformers' extract)."""

    def __init__(self, num_classes: int, channels: int, width: int, batchnorm: bool,
                 feature_map: bool = False):
        super().__init__()
        norm = [nn.BatchNorm2d(width)] if batchnorm else []
        self.backbone = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), *norm, nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)
        self.num_features, self.feature_map = width, feature_map

    def forward(self, inputs, only_fc: bool = False, only_feat: bool = False, **kwargs):
        if only_fc:
            return self.classifier(inputs)
        features = self.backbone(inputs)
        return features if only_feat else {"logits": self.classifier(features), "feat": features}

    def extract(self, inputs):
        return self.backbone[:-2](inputs) if self.feature_map else self.backbone(inputs)


def selected(value, select, args: tuple, kwargs: dict):
    """What a recorded call returned or was given: all it returned (None), an item (int) or an
    attribute (str) of it, or an argument: ("arg", position) or ("kwarg", name)."""
    if isinstance(select, tuple):
        value = args[select[1]] if select[0] == "arg" else kwargs[select[1]]
    elif isinstance(select, int):
        value = value[select]
    elif isinstance(select, str):
        value = getattr(value, select)
    return value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(value)


@contextlib.contextmanager
def recording(calls: dict[str, tuple], resolve: Callable[[str], object]) -> Iterator[dict]:
    """Wrap the callables named in `calls` ({quantity: ("call", where, attribute, select[,
    options])}) so that what one call returned or was given (`selected`) is kept under its
    quantity: the last call, or the call numbered options["call"] (0: the first); `resolve` maps
    `where` to the object or module that holds the attribute. The originals run unchanged and are
    put back afterwards. A quantity with options["default"] starts with it (a call that may not
    happen)."""
    recorded, undo = {}, []
    for quantity, (_, where, attribute, select, *options) in calls.items():
        options = options[0] if options else {}
        if "default" in options:
            recorded[quantity] = torch.tensor(options["default"])
        target = resolve(where)
        original, own = getattr(target, attribute), attribute in vars(target)
        number, counter = options.get("call"), itertools.count()

        def wrapper(*args, _original=original, _quantity=quantity, _select=select,
                    _number=number, _counter=counter, **kwargs):
            value = _original(*args, **kwargs)
            if _number in (None, next(_counter)):
                recorded[_quantity] = selected(value, _select, args, kwargs)
            return value
        setattr(target, attribute, wrapper)
        undo.append((target, attribute, original, own))
    try:
        yield recorded
    finally:
        for target, attribute, original, own in reversed(undo):
            if own:
                setattr(target, attribute, original)
            else:
                delattr(target, attribute)


def network_record(network: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (zeros where none reached it) and every buffer, by name."""
    record = {f"grad {name}": (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
              for name, p in network.named_parameters()}
    record.update({f"buffer {name}": b.detach().clone() for name, b in network.named_buffers()})
    return record


def attribute_path(value, path: str):
    for part in path.split("."):
        value = getattr(value, part)
    return value


# ---- semilearn's environment --------------------------------------------------------------------
DEFAULT_ENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssl-repro/semilearn-0.3.2"
PROJECT = "ssl-repro"   # this project's own distribution: not a pin
PACKAGES = ("torch", "numpy", "pillow")   # what semilearn's algorithm code imports (pillow: crmatch)


def uv(*arguments) -> None:
    command = shutil.which("uv")
    if command is None:
        sys.exit("benchmarks/reference_algorithms.py needs `uv` to make semilearn's environment "
                 "(pip install uv)")
    subprocess.run([command, *map(str, arguments)], check=True)


def semilearn_python(env: Path, semilearn: str) -> Path:
    """The interpreter of `env`, made (or reused) with semilearn (no dependencies) and PACKAGES at
    the versions of this environment (its torch, from uv's cache)."""
    pins = "".join(sorted({f"{d.metadata['Name']}=={d.version}\n" for d in importlib.metadata.distributions()
                           if d.metadata["Name"] and d.metadata["Name"] != PROJECT}))
    python, ready = env / "bin/python", env / "ssl-repro-ready"
    marker = f"{semilearn}\n{pins}"
    if ready.exists() and ready.read_text() == marker:
        return python
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    uv("venv", "--clear", "--quiet", env, "--python", version)
    uv("pip", "install", "--quiet", "--python", python, "--no-deps", semilearn)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(pins)
        constraints.flush()
        uv("pip", "install", "--quiet", "--python", python, *PACKAGES, "-c", constraints.name)
    ready.write_text(marker)
    return python


def run_semilearn(python: Path, problems: list[dict]) -> list[list[dict]]:
    with tempfile.TemporaryDirectory() as folder:
        problems_path, results_path = Path(folder, "problems.pt"), Path(folder, "results.pt")
        torch.save(problems, problems_path)
        done = subprocess.run([python, __file__, problems_path, results_path],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"semilearn's side failed:\n{done.stdout}{done.stderr}")
        return torch.load(results_path, weights_only=False)


# ---- semilearn's side ---------------------------------------------------------------------------
def placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def inert(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return type(attribute, (), {})
    module.__getattr__ = inert
    sys.modules[name] = module
    return module


def import_semilearn():
    """semilearn's algorithm registry, imported without its package __init__ (the trainer, the
    data sets) and with STUBS in place; semilearn.core's own __init__ registers every algorithm."""
    location = importlib.util.find_spec("semilearn").submodule_search_locations[0]
    placeholder_module("semilearn").__path__ = [location]
    for name in STUBS:
        placeholder_module(name)
    with contextlib.redirect_stdout(io.StringIO()):   # its notes on imbalanced algorithms it skips
        importlib.import_module("semilearn.core")
    from semilearn.core.utils import ALGORITHMS
    return ALGORITHMS


def build(registry, problem: dict):
    """semilearn's algorithm, built by its own __init__ with the problem's arguments; its network
    is TinyNet (a WRN's feature map where the network named is a CNN, as CRMatch reads it)."""
    cls = registry[problem["algorithm"]]
    own = cls.get_argument()
    defaults = {argument.name.lstrip("-"): argument.default for argument in own} if own else {}
    args = argparse.Namespace(**{**COMMON_ARGUMENTS, **defaults, **problem["arguments"],
                                 "algorithm": problem["algorithm"]})
    network = {**problem["network"], "feature_map": "wrn" in args.net or "resnet" in args.net}
    labeled = {"train_lb": types.SimpleNamespace(targets=problem["labeled_targets"])}
    without_trainer = type(cls.__name__, (cls,), {"set_dataset": lambda self: labeled,
                                                  "set_data_loader": lambda self: None,
                                                  "set_optimizer": lambda self: (None, None)})
    algorithm = without_trainer(args, lambda num_classes, **_: TinyNet(num_classes, **network))
    for key, value in problem["attributes"].items():
        setattr(algorithm, key, value)
    return algorithm


def resolver(algorithm) -> Callable[[str], object]:
    def resolve(where: str):
        if where == "algorithm":
            return algorithm
        if where.startswith("hook:"):
            return algorithm.hooks_dict[where.removeprefix("hook:")]
        return importlib.import_module(where)
    return resolve


def state_record(algorithm, state: dict) -> dict[str, torch.Tensor]:
    """The running state named by {our name: (semilearn's hook, or None for the algorithm, its
    attribute path)}."""
    owner = lambda hook: algorithm if hook is None else algorithm.hooks_dict[hook]
    return {f"state {ours}": attribute_path(owner(hook), attribute).detach().clone()
            for ours, (hook, attribute) in state.items()}


def semilearn_step(algorithm, step: dict, sources: dict, state: dict) -> dict:
    model = algorithm.model
    model.load_state_dict(step["weights"])
    model.train()
    model.zero_grad(set_to_none=True)
    algorithm.it = step["iteration"]
    for key, value in step["attributes"].items():
        setattr(algorithm, key, value)
    algorithm.call_hook("before_run", "EMAHook")   # the EMA of these weights (SimMatch reads it)
    if step.get("teacher") is not None:   # Mean Teacher's EMA, as semilearn resumes one
        algorithm.ema_model.load_state_dict(step["teacher"])
        algorithm.ema.load(algorithm.ema_model)
    names = inspect.signature(algorithm.train_step).parameters
    batch = {key: value for key, value in step["batch"].items() if key in names}
    calls = {quantity: source for quantity, source in sources.items() if source[0] == "call"}
    torch.manual_seed(step["seed"])
    numpy.random.seed(step["seed"])
    with recording(calls, resolver(algorithm)) as recorded:
        out_dict, log_dict = algorithm.train_step(**batch)
    out_dict["loss"].backward()
    record = {"loss": out_dict["loss"].detach().clone(), **recorded}
    record.update({quantity: torch.tensor(log_dict[source[1]]) for quantity, source in sources.items()
                   if source[0] == "log"})
    record.update(network_record(model))
    record.update(state_record(algorithm, state))
    return record


def main() -> None:
    problems_path, results_path = sys.argv[1:3]
    torch.set_num_threads(1)
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor   # semilearn's .cuda(gpu): the CPU
    registry = import_semilearn()
    results = []
    for problem in torch.load(problems_path, weights_only=False):
        with contextlib.redirect_stdout(io.StringIO()):   # its hooks print their targets
            algorithm = build(registry, problem)
        results.append([semilearn_step(algorithm, step, problem["sources"], problem["state"])
                        for step in problem["steps"]])
    torch.save(results, results_path)


if __name__ == "__main__":
    main()
