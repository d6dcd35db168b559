"""The training loop: SGD (Nesterov, semisup.optim), 7/16 cosine schedule, EMA, evaluation,
checkpoint/resume.

One readable loop. Data lives on the training device as uint8 tensors; each step draws indices,
augments whole batches there, and calls the algorithm. Per-step statistics stay on the device
and are read back only every `log_every` steps; evaluation happens every `eval_every` steps.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algorithms import Algorithm, StepBatch
from .algorithms.base import supervised_loss
from .errors import CheckpointError
from .optim import sgd_without_decay_on_norms_and_biases
from .data.augment import strong_augment, weak_augment


@dataclass
class TrainConfig:
    """The training loop's settings; every one is given (params.yaml holds them)."""

    steps: int
    batch_size: int
    uratio: int                        # mu: unlabeled batch = uratio * batch_size
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    ema_decay: float
    eval_every: int
    log_every: int
    checkpoint_every: int
    eval_batch_size: int
    last_k: int                        # median / mean over the last k evaluations
    strong_augment: str                # RandAugment variant: fixmatch | usb
    pad_fraction: float
    horizontal_flip: bool
    precision: str                     # fp32 | bf16 (autocast on the training device)
    channels_last: bool
    compile: bool


@dataclass
class TrainData:
    """uint8 images (N, C, H, W) and int64 labels, on the training device."""

    train_images: Tensor
    train_labels: Tensor
    labeled_indices: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra_unlabeled_images: Tensor | None = None
    extra_unlabeled_labels: Tensor | None = None

    def unlabeled(self) -> tuple[Tensor, Tensor]:
        """The unlabeled set: the whole training set (labeled images included) plus extras."""
        if self.extra_unlabeled_images is None:
            return self.train_images, self.train_labels
        return (torch.cat([self.train_images, self.extra_unlabeled_images]),
                torch.cat([self.train_labels, self.extra_unlabeled_labels]))


@dataclass
class TrainResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    stat_history: list[dict[str, float]]
    steps_per_second: float
    resumed_from: int = 0


class EpochSampler:
    """Indices without replacement within an epoch, reshuffled each epoch; resumable."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator
        self.order = torch.randperm(size, generator=generator, device=generator.device)
        self.position = 0

    def next(self, count: int) -> Tensor:
        parts = []
        while count > 0:
            if self.position == self.size:
                self.order = torch.randperm(self.size, generator=self.generator,
                                            device=self.generator.device)
                self.position = 0
            take = min(count, self.size - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            count -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"].to(self.order.device)
        self.position = state["position"]
        self.generator.set_state(state["generator"])


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def cosine_7_16(total_steps: int) -> Callable[[int], float]:
    """LR multiplier cos(7 pi k / (16 K)) of FixMatch."""
    return lambda step: math.cos(7 * math.pi * step / (16 * total_steps))


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """EMA of parameters; buffers (BatchNorm statistics) copied."""
    ema_params = list(ema_model.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


class Normalizer:
    def __init__(self, mean, std, device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images_uint8: Tensor) -> Tensor:
        images = (images_uint8.float() - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, normalize: Normalizer,
             batch_size: int, autocast) -> dict[str, float]:
    """Cross-entropy and error rate (%) on a labeled set, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    wrong = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        with autocast():
            logits = model(normalize(images[start:start + batch_size])).float()
        batch_labels = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum")
        wrong += (logits.argmax(dim=-1) != batch_labels).sum()
    model.train(was_training)
    return {"loss": loss_sum.item() / len(images), "error": 100.0 * wrong.item() / len(images)}


def summarize(curve: list[dict[str, float]], last_k: int) -> dict[str, float]:
    """Best, last, median and mean of the last k evaluations, for the EMA and the raw model."""
    metrics = {}
    for model_name in ("ema", "raw"):
        errors = torch.tensor([point[f"{model_name}/error"] for point in curve], dtype=torch.float64)
        tail = errors[-last_k:]
        metrics[f"{model_name}/best_error"] = errors.min().item()
        metrics[f"{model_name}/last_error"] = errors[-1].item()
        metrics[f"{model_name}/median{last_k}_error"] = tail.median().item()
        metrics[f"{model_name}/mean{last_k}_error"] = tail.mean().item()
    return metrics


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`. A
    write that fails (disk full) leaves the previous file whole and raises CheckpointError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except (OSError, RuntimeError) as error:   # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        step = obj.get("step") if isinstance(obj, dict) else None
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise CheckpointError(
            f"cannot write the checkpoint {path} at step {step} ({reason}; {free:,} bytes free "
            f"on its file system). Training stopped; the previous checkpoint, if any, is kept "
            f"whole. Free some space there (a WRN-28-8 checkpoint takes about 0.3 GB) and "
            f"rerun snakemake to resume from it") from error
    finally:
        tmp.unlink(missing_ok=True)   # no half file left


def load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # any failure to read is reported, never skipped
        raise CheckpointError(
            f"the checkpoint {path} exists but cannot be read ({type(error).__name__}: {error}). "
            f"Refusing to start afresh silently: delete {path} to restart this run from step 0, "
            f"or restore a good copy of it") from error


class Trainer:
    def __init__(self, model: nn.Module, algorithm: Algorithm, data: TrainData,
                 config: TrainConfig, seed: int, device: torch.device,
                 log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
                 checkpoint_path: Path | None = None,
                 progress: Callable[[str], None] = lambda line: None):
        self.config, self.seed, self.device = config, seed, device
        self.log, self.progress = log, progress
        self.checkpoint_path = checkpoint_path
        self.data = data
        self.algorithm = algorithm.to(device)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.algorithm.setup(self.model)
        self.ema_model = copy.deepcopy(self.model)
        for parameter in self.ema_model.parameters():
            parameter.requires_grad_(False)
        self.forward_model = torch.compile(self.model) if config.compile else self.model
        self.optimizer = sgd_without_decay_on_norms_and_biases(
            self.model, config.lr, config.weight_decay, config.momentum, config.nesterov)
        self.lr_factor = cosine_7_16(config.steps)
        self.normalize = Normalizer(data.mean, data.std, device, config.channels_last)
        # bf16 autocast on the training device: CUDA, or a CPU (fast with AMX / AVX512-BF16).
        use_bf16 = config.precision == "bf16"
        self.autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16
                         else nullcontext)
        # Separate streams of randomness: data order and augmentation, each seeded from `seed`.
        self.labeled_sampler = EpochSampler(len(data.labeled_indices),
                                            make_generator(device, seed * 3 + 1))
        self.unlabeled_images, self.unlabeled_labels = data.unlabeled()
        self.unlabeled_sampler = EpochSampler(len(self.unlabeled_images),
                                              make_generator(device, seed * 3 + 2))
        self.augment_generator = make_generator(device, seed * 3 + 3)
        self.step = 0
        self.curve: list[dict[str, float]] = []
        self.stat_sums: dict[str, Tensor] = {}   # per-step statistics since the last log line
        self.stat_counts: dict[str, int] = {}    # steps that reported each statistic
        self.stat_history: list[dict[str, float]] = []   # the averages logged so far

    # ---- one step -------------------------------------------------------------------------
    def next_batch(self, supervised_only: bool) -> StepBatch:
        config, data = self.config, self.data
        augment = {"flip": config.horizontal_flip, "pad_fraction": config.pad_fraction}
        labeled = data.labeled_indices[self.labeled_sampler.next(config.batch_size)]
        batch = StepBatch(
            labeled_images=self.normalize(weak_augment(data.train_images[labeled],
                                                       self.augment_generator, **augment)),
            labels=data.train_labels[labeled])
        if supervised_only or not self.algorithm.uses_unlabeled:
            return batch
        unlabeled = self.unlabeled_sampler.next(config.batch_size * config.uratio)
        images = self.unlabeled_images[unlabeled]
        batch.weak_images = self.normalize(weak_augment(images, self.augment_generator, **augment))
        if self.algorithm.second_view == "strong":
            batch.strong_images = self.normalize(strong_augment(
                images, self.augment_generator, variant=config.strong_augment, **augment))
        elif self.algorithm.second_view == "weak":
            batch.strong_images = self.normalize(
                weak_augment(images, self.augment_generator, **augment))
        batch.unlabeled_indices = unlabeled
        batch.unlabeled_labels = self.unlabeled_labels[unlabeled]
        return batch

    def train_step(self) -> dict[str, Tensor]:
        supervised_only = self.algorithm.supervised_only(self.step)
        batch = self.next_batch(supervised_only)
        with self.autocast():
            if supervised_only:
                loss = supervised_loss(self.forward_model(batch.labeled_images).float(), batch.labels)
                stats = {"loss_sup": loss.detach()}
            else:
                teacher = self.ema_model if self.algorithm.needs_teacher else None
                output = self.algorithm.training_step(self.forward_model, batch, self.step, teacher)
                loss, stats = output.loss, output.stats
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.lr = self.lr_at(self.step)
        self.optimizer.step()
        update_ema(self.ema_model, self.model, self.config.ema_decay)
        self.step += 1
        stats = dict(stats)
        stats["loss"] = loss.detach()
        return stats

    def lr_at(self, step: int) -> float:
        return self.config.lr * self.lr_factor(step)

    # ---- evaluation, checkpoints ----------------------------------------------------------
    def evaluate_both(self) -> dict[str, float]:
        point = {"step": float(self.step)}
        for name, model in (("ema", self.ema_model), ("raw", self.model)):
            result = self.evaluate_model(model)
            point[f"{name}/loss"], point[f"{name}/error"] = result["loss"], result["error"]
        self.curve.append(point)
        self.algorithm.on_evaluation(self.step, point, self.model, self.evaluate_model)
        return point

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.data.test_images, self.data.test_labels, self.normalize,
                        self.config.eval_batch_size, self.autocast)

    def state_dict(self) -> dict:
        return {
            "step": self.step, "seed": self.seed, "config": asdict(self.config),
            "model": self.model.state_dict(), "ema_model": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "augment_generator": self.augment_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "curve": self.curve, "stat_sums": self.stat_sums, "stat_counts": self.stat_counts,
            "stat_history": self.stat_history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["config"] != asdict(self.config):
            raise CheckpointError(
                f"the checkpoint {self.checkpoint_path} was written by a run with another seed or "
                f"training config; delete it to start this run afresh")
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.labeled_sampler.load_state_dict(state["labeled_sampler"])
        self.unlabeled_sampler.load_state_dict(state["unlabeled_sampler"])
        self.augment_generator.set_state(state["augment_generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.curve = state["curve"]
        self.stat_sums = state["stat_sums"]
        self.stat_counts = state["stat_counts"]
        self.stat_history = state["stat_history"]

    def resume_if_possible(self) -> int:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return 0
        state = load_checkpoint(self.checkpoint_path, self.device)
        try:
            self.load_state_dict(state)
        except CheckpointError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            # Readable, but not a checkpoint of this run (another model, an older format, ...).
            raise CheckpointError(
                f"the checkpoint {self.checkpoint_path} cannot be read as a checkpoint of this run "
                f"({type(error).__name__}: {error}). Refusing to start afresh silently: delete "
                f"{self.checkpoint_path} to restart this run from step 0") from error
        return self.step

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            save_atomically(self.state_dict(), self.checkpoint_path)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config = self.config
        resumed_from = self.resume_if_possible()
        if resumed_from:
            self.progress(f"resumed from checkpoint at step {resumed_from}/{config.steps}")
        self.model.train()
        window_start, started = time.perf_counter(), time.perf_counter()
        while self.step < config.steps:
            for key, value in self.train_step().items():
                self.stat_sums[key] = self.stat_sums.get(key, 0) + value.detach().float()
                self.stat_counts[key] = self.stat_counts.get(key, 0) + 1
            step = self.step
            if step % config.log_every == 0 or step == config.steps:
                averages = {f"train/{k}": (v / self.stat_counts[k]).item()
                            for k, v in self.stat_sums.items()}
                averages["train/lr"] = self.lr_at(step)   # the next step's
                self.stat_history.append({"step": float(step), **averages})
                self.log(step, averages)
                self.stat_sums, self.stat_counts = {}, {}
            if step % config.eval_every == 0 or step == config.steps:
                point = self.evaluate_both()
                self.log(step, {k: v for k, v in point.items() if k != "step"})
                elapsed = time.perf_counter() - window_start
                rate = (step - resumed_from) / max(time.perf_counter() - started, 1e-9)
                eta = (config.steps - step) / max(rate, 1e-9)
                self.progress(f"step {step}/{config.steps} ({100 * step / config.steps:.0f}%) "
                              f"{rate:.1f} steps/s, ETA {eta:.0f}s, test error ema "
                              f"{point['ema/error']:.2f}% raw {point['raw/error']:.2f}% "
                              f"[{elapsed:.1f}s since last]")
                window_start = time.perf_counter()
            # At the end too: a job stopped after training (its outputs or MLflow run not yet
            # complete) resumes at the last step and trains no step again.
            if step % config.checkpoint_every == 0 or step == config.steps:
                self.save_checkpoint()
        run_seconds = time.perf_counter() - started
        steps_per_second = (config.steps - resumed_from) / max(run_seconds, 1e-9)
        return TrainResult(metrics=summarize(self.curve, config.last_k), curve=self.curve,
                           stat_history=self.stat_history, steps_per_second=steps_per_second,
                           resumed_from=resumed_from)
