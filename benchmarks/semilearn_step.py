"""semilearn 0.3.2's own FixMatch training step, timed: the peer that benchmarks/peer_step.py runs
beside ssl-repro's step. Nothing of semilearn is copied here; this file only drives its code:

- its CIFAR-10 data: `get_cifar` (its split, its BasicDataset, torchvision transforms with its
  RandAugment(3, 5)) on random uint8 CIFAR-shaped images, which stand in for
  torchvision.datasets.CIFAR10 (no download);
- its DataLoaders (`get_data_loader`: RandomSampler, `num_workers` for the labeled loader and
  twice that for the unlabeled one, as its AlgorithmBase sets them);
- its FixMatch (`get_algorithm`, with the arguments of its `get_config` and its
  config/classic_cv/fixmatch/fixmatch_cifar10_4000_0.yaml: fp32, `use_cat`), `wrn_28_2`,
  `get_optimizer` (SGD, Nesterov), the cosine schedule, and its hooks: ParamUpdateHook (backward,
  step), EMAHook, TimerHook (CUDA events), evaluation, checkpoint and logging hooks (which do
  nothing at these steps);
- one step is the body of its `AlgorithmBase.train` loop: `before_train_step` hooks,
  `train_step(**process_batch(...))`, `after_train_step` hooks.

It runs in semilearn's own environment, not the project's: the interpreter with `PYTHONPATH`
set to a folder holding semilearn 0.3.2, progress and ruamel.yaml (benchmarks/gpu_check.sh
installs them there from .gpu-bundle/semilearn, see benchmarks/gpu_bundle.sh).

Importing semilearn imports every network and dataset of every modality it has (BERT, HuBERT,
wav2vec 2, ViT, medical and audio sets), which need transformers, timm, torchaudio and
scikit-image, and its wandb and aim logging hooks. None of these runs in the CIFAR FixMatch step;
they are replaced by placeholders (PLACEHOLDERS) so that neither their absence nor their version
matters. On the CPU two things change: `process_batch` moves tensors with `.to(device)` instead
of `.cuda()`, and the TimerHook (CUDA events) is left out.

    PYTHONPATH=<semilearn's folder> python benchmarks/semilearn_step.py --device cuda \\
        [--steps 50] [--warmup 5] [--input-batches N] [--workers 1] [--dataset-size 50000]
        [--n-labels 4000]

Prints one JSON line: input batches per second (its loaders and `process_batch` alone, over
--input-batches), then steps per second of the whole step (over --steps), each after --warmup
untimed ones, and the peak GPU memory of the steps.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import tempfile
import time
import types

import numpy as np
import torch
import torchvision

# Not run by the CIFAR FixMatch step; imported by semilearn's package files (see the docstring).
PLACEHOLDERS = ("wandb", "aim", "transformers", "timm", "torchaudio", "skimage",
                "torch.utils.tensorboard")


class PlaceholderModule(types.ModuleType):
    """Any attribute is a class that refuses to be made: importable, never usable."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)

        def refuse(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{attribute} is a placeholder (semilearn_step.py)")
        return type(attribute, (), {"__init__": refuse, "__module__": self.__name__})


class PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if any(name == stub or name.startswith(stub + ".") for stub in PLACEHOLDERS):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return PlaceholderModule(spec.name)

    def exec_module(self, module):
        pass


class SyntheticCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10: random uint8 HWC images and labels, as .data
    and .targets (the attributes semilearn's get_cifar reads)."""
    train_size = 50_000

    def __init__(self, root, train: bool = True, download: bool = False, **kwargs):
        rng = np.random.default_rng(0 if train else 1)
        size = self.train_size if train else 256
        self.data = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, size).tolist()


def config(args, work_dir: str) -> dict:
    """Its classic_cv FixMatch CIFAR-10 config (4000 labels), less saving, resuming and
    distributed training; evaluation, checkpoints and log lines fall beyond the timed steps."""
    steps = args.warmup + args.steps
    return dict(
        algorithm="fixmatch", save_dir=work_dir, save_name="benchmark", resume=False,
        overwrite=True, use_tensorboard=False, epoch=1, num_train_iter=10 * steps + 10,
        num_eval_iter=10 ** 9, num_log_iter=10 ** 9, num_labels=args.n_labels,
        batch_size=args.batch, eval_batch_size=256, hard_label=True, T=0.5, p_cutoff=0.95,
        ulb_loss_ratio=1.0, uratio=args.uratio, ema_m=0.999, crop_ratio=0.875, img_size=32,
        optim="SGD", lr=0.03, momentum=0.9, weight_decay=0.0005, layer_decay=1.0, amp=False,
        clip=0.0, use_cat=True, net="wrn_28_2", net_from_name=False, data_dir=work_dir,
        dataset="cifar10", train_sampler="RandomSampler", num_classes=10,
        num_workers=args.workers, seed=args.seed, world_size=1, rank=0,
        multiprocessing_distributed=False, distributed=False,
        gpu=0 if args.device == "cuda" else None)


def build(args, work_dir: str):
    """semilearn's FixMatch, with its data, loaders, network, optimizer and hooks, on the device."""
    sys.meta_path.insert(0, PlaceholderFinder())
    torchvision.datasets.CIFAR10 = SyntheticCIFAR10
    SyntheticCIFAR10.train_size = args.dataset_size
    from semilearn import get_algorithm, get_config, get_net_builder
    from semilearn.core.utils import send_model_cuda

    semilearn_args = get_config(config(args, work_dir))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    algorithm = get_algorithm(semilearn_args, get_net_builder("wrn_28_2", False), None, None)
    if args.device == "cuda":
        algorithm.model = send_model_cuda(semilearn_args, algorithm.model)
        algorithm.ema_model = send_model_cuda(semilearn_args, algorithm.ema_model,
                                              clip_batch=False)
    else:
        algorithm.hooks_dict.pop("TimerHook")
        algorithm.process_batch = cpu_process_batch(algorithm)
    algorithm.model.train()
    algorithm.call_hook("before_run")     # the EMA's shadow weights, the timer's CUDA events
    return algorithm


def cpu_process_batch(algorithm):
    """Its process_batch (keep the train_step's arguments, drop None), with .to('cpu') for
    .cuda()."""
    names = list(inspect.signature(algorithm.train_step).parameters)

    def process_batch(**batch):
        return {name: value.to("cpu") for name, value in batch.items()
                if name in names and value is not None}
    return process_batch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(run_once, count: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        run_once()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        run_once()
    synchronize(device)
    return time.perf_counter() - start


def measure(algorithm, args) -> dict:
    # as AlgorithmBase.train zips them (the two samplers draw equally many batches)
    batches = zip(algorithm.loader_dict["train_lb"], algorithm.loader_dict["train_ulb"],
                  strict=False)

    def input_only():
        data_lb, data_ulb = next(batches)
        algorithm.process_batch(**data_lb, **data_ulb)

    def step():   # the body of AlgorithmBase.train's loop
        data_lb, data_ulb = next(batches)
        algorithm.call_hook("before_train_step")
        algorithm.out_dict, algorithm.log_dict = algorithm.train_step(
            **algorithm.process_batch(**data_lb, **data_ulb))
        algorithm.call_hook("after_train_step")
        algorithm.it += 1

    input_batches = args.input_batches or args.steps
    input_seconds = timed(input_only, input_batches, args.warmup, args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_seconds = timed(step, args.steps, args.warmup, args.device) if args.steps else None
    return {"input_per_second": input_batches / input_seconds,
            "steps_per_second": args.steps / step_seconds if args.steps else None,
            "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2 ** 20
                               if args.device == "cuda" else None)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--steps", type=int, default=50,
                        help="timed steps (0: input batches only)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--input-batches", type=int, help="timed input batches (default: --steps)")
    parser.add_argument("--batch", type=int, default=64, help="labeled batch size B")
    parser.add_argument("--uratio", type=int, default=7, help="mu: unlabeled batch = mu * B")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers of the labeled loader; the unlabeled one has twice as many "
                             "(its config: 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--dataset-size", type=int, default=50_000, help="synthetic images")
    parser.add_argument("--n-labels", type=int, default=4000, help="labeled images")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="semilearn-step-") as work_dir:
        algorithm = build(args, work_dir)
        figures = measure(algorithm, args)
    import semilearn
    print(json.dumps({"pipeline": "semilearn", "version": getattr(semilearn, "__version__", "0.3.2"),
                      "device": args.device, "steps": args.steps, "warmup": args.warmup,
                      "input_batches": args.input_batches or args.steps,
                      "images_per_step": args.batch * (1 + 2 * args.uratio),
                      "workers": [args.workers, 2 * args.workers], "load_before": load_before,
                      **figures}), flush=True)


if __name__ == "__main__":
    main()
