"""Steps and images per second of one FixMatch training step at the classic shape (WRN-28-2,
32x32x3, B=64, mu=7: 64 labeled + 448 weak + 448 strong = 960 images per step) for two pipelines:

(a) conventional: uint8 HWC images in a torch Dataset; each image goes through PIL crop/flip
    (weak) and PIL crop/flip + RandAugment + Cutout (strong, the implementation in
    benchmarks/augment.py), then ToTensor/Normalize, in DataLoader worker processes (pinned
    memory on CUDA); the model runs in fp32, contiguous memory format, eager.
(b) ssl-repro: the real semisup.train.Trainer.train_step: uint8 data resident on the training
    device, batched per-sample weak/strong augmentation there, bf16 autocast and channels_last on
    CUDA, optionally torch.compile (--compile).

Both run the same model (semisup.models.wrn_28_2, same initial weights), the same loss
(semisup.algorithms FixMatch.training_step), SGD with Nesterov momentum, the 7/16 cosine LR
schedule and the EMA update (semisup.train.update_ema); only the data path, precision, memory
format and compilation differ.

    python benchmarks/train_step.py [--device cpu|cuda ...] [--steps N] [--warmup N]
        [--batch 64] [--uratio 7] [--workers N] [--threads N] [--compile] [--pipelines a b]
        [--dataset-size N] [--augment-repeats N]

Timing: --warmup untimed steps (DataLoader worker start-up, cuDNN autotuning, compilation), then
--steps timed steps; the clock reads (and, on CUDA, torch.cuda.synchronize) happen only at the
start and end of the timed window: the loop itself reads nothing back from the device. The
pipelines run one after the other; the load average is printed before each, since the other
processes on the machine slow both. A short "augmentation alone" section (strong augmentation,
images per second, the PIL code of benchmarks/augment.py in this one process against the batched
semisup.data.augment.strong_augment on the device) follows unless --augment-repeats 0.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, get_worker_info
from torchvision.transforms import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import images_per_second, pil_strong_augment, pil_weak_augment, run_pil

from semisup.algorithms import Side, StepBatch, StepContext, build_algorithm
from semisup.catalog import DATASETS
from semisup.data.augment import strong_augment
from semisup.data.image import image_train_data
from semisup.data.modality import DataFacts
from semisup.data.registry import ImageData
from semisup.models import build_network
from semisup.optim import lr_factor
from semisup.train import TrainConfig, Trainer, update_ema

from pipeline.config import EXECUTION_KEYS, ROOT, load_params
from pipeline.runs.train import image_augment, train_config

INPUTS = DATASETS["cifar10"].inputs
MEAN, STD = INPUTS.mean, INPUTS.std
NUM_CLASSES = 10
# The Dash paper's CIFAR-10 study: its training settings, network variant and FixMatch's
# hyperparameters (params.yaml with configs/dash-cifar10.yaml on top).
PAPER = load_params(ROOT / "params.yaml", ROOT / "configs/dash-cifar10.yaml")


def paper_train(**overrides) -> dict:
    train = {k: v for k, v in PAPER["train"].items()
             if k not in (*EXECUTION_KEYS, "portable_numerics")}
    return {**train, "horizontal_flip": True, **overrides}


def paper_train_config(**overrides) -> TrainConfig:
    return train_config(paper_train(**overrides))


def paper_model(name: str):
    return build_network(name, NUM_CLASSES, INPUTS, **PAPER["models"][name])


def paper_fixmatch(num_unlabeled: int, num_labeled: int, total_steps: int):
    facts = DataFacts(num_classes=NUM_CLASSES, num_labeled=num_labeled, num_unlabeled=num_unlabeled,
                      labeled_class_counts=(num_labeled // NUM_CLASSES,) * NUM_CLASSES)
    return build_algorithm("fixmatch", PAPER["algorithms"]["fixmatch"], facts=facts,
                           total_steps=total_steps)
DEFAULTS = {"cpu": {"steps": 5, "warmup": 1, "dataset_size": 10_000},
            "cuda": {"steps": 200, "warmup": 20, "dataset_size": 50_000}}


# ---- (a) the conventional pipeline --------------------------------------------------------------

def to_normalized_tensor(image) -> torch.Tensor:
    """transforms.ToTensor() then transforms.Normalize(MEAN, STD), per image. (An array from
    np.asarray(PIL image) is read-only: copied, as ToTensor copies a PIL image's pixels.)"""
    if isinstance(image, np.ndarray):
        image = np.array(image)
    return TF.normalize(TF.to_tensor(image), MEAN, STD)


class LabeledDataset(Dataset):
    """(weak view, label) per image, as the reference codebases' labeled Dataset."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.images, self.labels, self.rng = images, labels, random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        weak = to_normalized_tensor(pil_weak_augment(self.images[index], self.rng))
        return weak, int(self.labels[index])


class UnlabeledDataset(LabeledDataset):
    """(weak view, strong view, true label) per image; the label only feeds statistics."""

    def __getitem__(self, index: int):
        array = self.images[index]
        weak = to_normalized_tensor(pil_weak_augment(array, self.rng))
        strong = to_normalized_tensor(pil_strong_augment(array, "fixmatch", self.rng))
        return weak, strong, int(self.labels[index])


def seed_worker(worker_id: int) -> None:
    info = get_worker_info()
    info.dataset.rng.seed(info.seed)     # distinct augmentation draws in each worker


def infinite(loader: DataLoader):
    while True:
        yield from loader


def loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
           seed: int) -> DataLoader:
    """Sampling with replacement, as TorchSSL/USB's RandomSampler(num_samples=...), so that
    epochs never end inside the timed window."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10 ** 9,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True,
                      persistent_workers=workers > 0,
                      worker_init_fn=seed_worker if workers > 0 else None)


class ConventionalStep:
    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, n_labels: int, args,
                 device: torch.device, total_steps: int):
        self.device = device
        torch.manual_seed(args.seed)
        self.model = paper_model(args.model).to(device)
        self.model.train()
        self.ema_model = paper_model(args.model).to(device)
        self.ema_model.load_state_dict(self.model.state_dict())
        self.ema_model.requires_grad_(False)
        config = paper_train_config(steps=total_steps, batch_size=args.batch, uratio=args.uratio)
        self.ema_decay, optimizer = config.ema_decay, config.optimizer
        # The references' optimizer: torch.optim.SGD, no weight decay on BatchNorm and biases.
        groups = [{"params": [p for p in self.model.parameters() if p.dim() > 1],
                   "weight_decay": optimizer.weight_decay},
                  {"params": [p for p in self.model.parameters() if p.dim() <= 1],
                   "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=optimizer.lr, momentum=optimizer.momentum,
                                         nesterov=optimizer.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor("cosine", step, total_steps, 0))
        self.algorithm = paper_fixmatch(len(images_hwc), n_labels, total_steps).to(device)
        self.generator = torch.Generator(device=device)
        labeled = LabeledDataset(images_hwc[:n_labels], labels[:n_labels], args.seed)
        unlabeled = UnlabeledDataset(images_hwc, labels, args.seed + 1)
        self.labeled = infinite(loader(labeled, args.batch, args.workers, device, args.seed))
        self.unlabeled = infinite(loader(unlabeled, args.batch * args.uratio, args.workers,
                                         device, args.seed + 1))
        self.step = 0

    def __call__(self) -> None:
        to = lambda tensor: tensor.to(self.device, non_blocking=True)
        labeled_images, labels = next(self.labeled)
        weak_images, strong_images, unlabeled_labels = next(self.unlabeled)
        no_indices = torch.zeros(0, dtype=torch.long, device=self.device)   # FixMatch reads none
        batch = StepBatch(labeled=Side([to(labeled_images)], to(labels), no_indices),
                          unlabeled=Side([to(weak_images), to(strong_images)],
                                         to(unlabeled_labels), no_indices))
        ctx = StepContext(network=self.model, step=self.step, generator=self.generator)
        output = self.algorithm.training_step(ctx, batch)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        update_ema(self.ema_model, self.model, self.ema_decay)
        self.step += 1

    def close(self) -> None:
        """Stop the DataLoader workers before the next pipeline runs."""
        self.labeled.close()
        self.unlabeled.close()


# ---- (b) ssl-repro: semisup.train.Trainer -------------------------------------------------------

class SslReproStep:
    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor, n_labels: int, args,
                 device: torch.device, total_steps: int):
        cuda = device.type == "cuda"
        train = paper_train(steps=total_steps, batch_size=args.batch, uratio=args.uratio,
                            precision="bf16" if cuda else "fp32", channels_last=cuda,
                            compile=args.compile)
        images = ImageData(train_images=images_nchw, train_labels=labels,
                           test_images=images_nchw[:16], test_labels=labels[:16],
                           class_names=[str(c) for c in range(NUM_CLASSES)])
        data = image_train_data(images, torch.arange(n_labels), INPUTS, image_augment(train),
                                cuda, device)
        config = train_config(train)
        torch.manual_seed(args.seed)
        model = paper_model(args.model)
        algorithm = paper_fixmatch(len(images_nchw), n_labels, total_steps)
        self.trainer = Trainer(model, algorithm, data, config, args.seed, device)
        self.trainer.network.train()
        self.config = config

    def __call__(self) -> None:
        self.trainer.train_step()     # returns 0-dim device tensors; nothing is read back

    def close(self) -> None:
        pass


# ---- timing -------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones; synchronised at both ends only."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {load_average()}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} logical cores)"


def synthetic_data(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 CIFAR-shaped images, stored HWC as torchvision's CIFAR10.data, and labels."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, size, dtype=np.int64))


def benchmark_device(device: torch.device, args) -> None:
    defaults = DEFAULTS[device.type]
    steps = args.steps if args.steps is not None else defaults["steps"]
    warmup = args.warmup if args.warmup is not None else defaults["warmup"]
    size = args.dataset_size if args.dataset_size is not None else defaults["dataset_size"]
    n_labels = min(args.n_labels, size)
    images_per_step = args.batch * (1 + 2 * args.uratio)
    images_hwc, labels = synthetic_data(size, args.seed)
    images_nchw = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()

    print(f"\n== {device.type}: {device_name(device)}")
    print(f"   {args.model}, B={args.batch}, mu={args.uratio}: {images_per_step} images per step; "
          f"{size} synthetic 32x32x3 images ({n_labels} labeled); {warmup} warm-up + {steps} "
          f"timed steps per pipeline; torch threads {torch.get_num_threads()}; "
          f"(a) DataLoader workers {args.workers}; (b) compile {args.compile}")
    pipelines = [pipeline for pipeline in (
        ("(a) conventional", "PIL per image in workers, fp32", ConventionalStep,
         (images_hwc, labels)),
        ("(b) ssl-repro", ("on-device batched aug, bf16 autocast, channels_last"
                           if device.type == "cuda" else "on-device batched aug, fp32")
         + (", compiled" if args.compile else ""), SslReproStep,
         (images_nchw, torch.from_numpy(labels))),
    ) if pipeline[0][1] in args.pipelines]
    rows = [time_pipeline(pipeline, device, args, n_labels, warmup, steps) for pipeline in pipelines]
    print(f"{'pipeline':17s} {'what':58s} {'steps/s':>8s} {'images/s':>9s} {'s/step':>7s} "
          f"{'peak MB':>8s}  load before (1/5/15 min)")
    for name, description, rate, memory, load in rows:
        print(f"{name:17s} {description:58s} {rate:8.3f} {rate * images_per_step:9,.0f} "
              f"{1 / rate:7.3f} {memory:>8s}  {load}")
    if len(rows) == 2:
        print(f"ratio (b)/(a): {rows[1][2] / rows[0][2]:.2f}x   (load after: {load_average()})")
    if args.augment_repeats > 0:
        benchmark_augmentation(device, images_nchw, args)


def time_pipeline(pipeline, device: torch.device, args, n_labels: int, warmup: int,
                  steps: int) -> tuple:
    """(name, description, steps/s, peak GPU memory in MB or '-', load average before)."""
    name, description, make, data = pipeline
    load_before = load_average()
    step = make(*data, n_labels, args, device, warmup + steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_steps(step, device, warmup, steps)
    memory = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:,.0f}"
              if device.type == "cuda" else "-")
    step.close()
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return name, description, steps / seconds, memory, load_before


def benchmark_augmentation(device: torch.device, images_nchw: torch.Tensor, args) -> None:
    """Strong augmentation alone: PIL per image in this process against the batched path."""
    batch = args.batch * args.uratio
    cpu_images = images_nchw[:batch]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed)
    speeds = images_per_second({
        "pil": (lambda images: run_pil(images, "fixmatch", rng), cpu_images),
        "batched": (lambda images: strong_augment(images, generator, variant="fixmatch"),
                    cpu_images.to(device)),
    }, args.augment_repeats, batch)
    print(f"augmentation alone (strong, fixmatch RandAugment, {batch} images per batch, "
          f"median of {args.augment_repeats}): PIL per image in 1 process "
          f"{speeds['pil']:,.0f} img/s, batched on {device.type} {speeds['batched']:,.0f} "
          f"img/s, ratio {speeds['batched'] / speeds['pil']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", nargs="+", choices=["cpu", "cuda"],
                        default=["cuda" if torch.cuda.is_available() else "cpu"],
                        help="one or more devices, each benchmarked in turn "
                             "(default: cuda if available, else cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per pipeline (default: 5 on "
                                                  "CPU, 200 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on CPU, "
                                                   "20 on CUDA)")
    parser.add_argument("--batch", type=int, default=64, help="labeled batch size B")
    parser.add_argument("--uratio", type=int, default=7, help="mu: unlabeled batch = mu * B")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="DataLoader workers of each loader of (a) (default: all cores)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads of the training process (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in (b)")
    parser.add_argument("--pipelines", nargs="+", choices=["a", "b"], default=["a", "b"],
                        help="which pipelines to time: a (conventional), b (ssl-repro)")
    parser.add_argument("--model", default="wrn_28_2")
    parser.add_argument("--dataset-size", type=int,
                        help="synthetic images (default: 10000 on CPU, 50000 on CUDA)")
    parser.add_argument("--n-labels", type=int, default=4000, help="labeled images")
    parser.add_argument("--augment-repeats", type=int, default=10,
                        help="timed batches of the augmentation-alone figure (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if "cuda" in args.device and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU here")

    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, Python {platform.python_version()}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} logical cores")
    print(f"uptime: {uptime()}")
    for name in args.device:
        benchmark_device(torch.device(name), args)
    print(f"\nuptime: {uptime()}")


if __name__ == "__main__":
    main()
