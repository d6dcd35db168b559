"""Each registered algorithm's training step against FixMatch's, at the same batch shape, beside
the passes its method needs: is any algorithm slower than its forward and backward passes explain?

    uv run python benchmarks/algorithm_steps.py                       # CPU, small_cnn on digits
    uv run python benchmarks/algorithm_steps.py --model wrn_28_2 --dataset digits_rgb32 \\
        --batch 64 --uratio 7 --device cuda --steps 50

For every algorithm, the real `semisup.train.Trainer.train_step()` (views from the data layer,
the algorithm's step, backward, optimizer, EMA) with params.yaml's hyperparameters, mu = --uratio
for all (USB's mu = 1 algorithms are timed at the same shape, so that only the method differs).
Counted during the timed steps, by hooks on the network: the samples that went forward through
it (the teacher's and the EMA's passes included) and the samples whose forward pass a backward
went through. A step's time is modelled as a fixed part (optimizer, EMA, sampling) plus a cost
per pass unit, a unit being a sample's forward pass and a backward pass two (it costs about twice
as much); the two are fitted to the supervised step (the fewest passes) and FixMatch's. An
algorithm is slower than its passes explain when its time exceeds the model's by more than
--slack (default 25 %: augmentation and the method's own tensor work). Median over --repeats
timed windows, algorithms interleaved window by window.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from semisup.algorithms import ALGORITHMS, build_algorithm
from semisup.data import get_dataset
from semisup.data.image import image_train_data
from semisup.data.splits import make_split
from semisup.models import build_network
from semisup.train import Trainer

from pipeline.config import default_params, default_train_options
from pipeline.runs.train import image_augment, train_config

ROOT = Path(__file__).resolve().parent.parent


class PassCounter:
    """Counts samples through a network's forward, and those a backward reaches."""

    def __init__(self):
        self.forward = self.backward = 0

    def attach(self, network: torch.nn.Module) -> None:
        network.register_forward_hook(self.on_forward)

    def on_forward(self, module, inputs, output) -> None:
        samples = output.logits.shape[0]
        self.forward += samples
        if output.logits.requires_grad:
            output.logits.register_hook(lambda grad: self.count_backward(samples))

    def count_backward(self, samples: int) -> None:
        self.backward += samples


def make_trainer(name: str, args, data, inputs, num_classes: int, device) -> Trainer:
    options = default_train_options(args.dataset, steps=10 ** 6, batch_size=args.batch,
                                    uratio=args.uratio, eval_every=10 ** 6, log_every=10 ** 6,
                                    checkpoint_every=10 ** 6)
    params = default_params()["algorithms"][name]
    torch.manual_seed(0)
    network = build_network(args.model, num_classes, inputs, **default_params()["models"][args.model])
    algorithm = build_algorithm(name, params, total_steps=10 ** 6, facts=data.facts(
        num_classes, ALGORITHMS[name].labeled_set))
    return Trainer(network, algorithm, data, train_config(options), 0, device)


def load(args, device):
    spec = get_dataset(args.dataset)
    root = Path(args.data) / args.dataset
    options = default_params()["datasets"]["digits"]
    spec.download(root, **options)
    raw = spec.load(root, **options)
    split = make_split(raw.train_labels.numpy(), args.n_labels, raw.num_classes, 0, args.dataset)
    raw = replace(raw, test_images=raw.test_images[:8], test_labels=raw.test_labels[:8])
    augment = image_augment(default_train_options(args.dataset))
    data = image_train_data(raw, torch.tensor(split["labeled_indices"]), spec.inputs, augment,
                            False, device)
    return data, spec.inputs, raw.num_classes


def time_window(trainer: Trainer, steps: int, device) -> float:
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    synchronize()
    return (time.perf_counter() - start) / steps


def measure(args) -> dict[str, dict]:
    device = torch.device(args.device)
    data, inputs, num_classes = load(args, device)
    names = sorted(set(args.algorithms or ALGORITHMS) | {"fixmatch", "supervised"})
    trainers, counters, times = {}, {}, {name: [] for name in names}
    for name in names:
        trainers[name] = make_trainer(name, args, data, inputs, num_classes, device)
        for _ in range(args.warmup):
            trainers[name].train_step()
        counters[name] = PassCounter()
        counters[name].attach(trainers[name].network)
        if trainers[name].ema_network is not trainers[name].network:
            counters[name].attach(trainers[name].ema_network)
    for _ in range(args.repeats):
        for name in names:
            times[name].append(time_window(trainers[name], args.steps, device))
    windows = args.repeats * args.steps
    return {name: {"seconds": statistics.median(times[name]),
                   "forward": counters[name].forward / windows,
                   "backward": counters[name].backward / windows} for name in names}


def report(results: dict[str, dict], slack: float) -> list[str]:
    units = lambda r: r["forward"] + 2 * r["backward"]
    fixmatch, supervised = results["fixmatch"], results["supervised"]
    per_unit = (fixmatch["seconds"] - supervised["seconds"]) / (units(fixmatch) - units(supervised))
    fixed = supervised["seconds"] - per_unit * units(supervised)
    lines = [f"model: {1000 * fixed:.2f} ms per step + {1e6 * per_unit:.2f} us per pass unit "
             f"(fitted to supervised and fixmatch)",
             f"{'algorithm':16s} {'ms/step':>8s} {'x FixMatch':>10s} {'fwd/step':>9s} "
             f"{'bwd/step':>9s} {'model ms':>9s}  verdict"]
    for name, r in results.items():
        predicted = fixed + per_unit * units(r)
        verdict = ("slower than its passes explain" if r["seconds"] > predicted * (1 + slack)
                   else "ok")
        lines.append(f"{name:16s} {1000 * r['seconds']:8.2f} {r['seconds'] / fixmatch['seconds']:10.2f} "
                     f"{r['forward']:9.0f} {r['backward']:9.0f} {1000 * predicted:9.2f}  {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="*", help="default: every registered one")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="digits", choices=["digits", "digits_rgb32"])
    parser.add_argument("--data", default="/tmp/ssl-repro-benchmark-data")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--uratio", type=int, default=4)
    parser.add_argument("--n-labels", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--slack", type=float, default=0.25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s); {args.model} on "
          f"{args.dataset}, B = {args.batch}, mu = {args.uratio}; median of {args.repeats} "
          f"windows of {args.steps} steps", flush=True)
    print("\n".join(report(measure(args), args.slack)))


if __name__ == "__main__":
    sys.exit(main())
