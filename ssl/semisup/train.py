"""The training loop: sample, views, step, optimizer, EMA, evaluate, checkpoint.

One readable loop. The data layer (semisup.data.modality) holds the inputs on the training
device; each step samples indices, asks it for the views the algorithm declares (and, where the
augmentation learns from probes, for a probe of the labeled samples, which the network the
augmentation names scores in eval mode before the step), and calls the algorithm's step.
Per-step statistics stay on the device and are read back only every `log_every` steps;
evaluation happens every `eval_every` steps (and at the steps the algorithm asks for). The
optimizer and the learning-rate schedule are registered parts (semisup.optim).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algorithms import Algorithm, Side, StepBatch, StepContext
from .checkpoint import load_checkpoint, save_atomically
from .data.inputs import Inputs, batch_size
from .data.modality import Probe, TrainData
from .errors import CheckpointError
from .models.network import Network
from .optim import OptimizerConfig, build_optimizer, lr_factor
from .sampling import EpochSampler, make_generator


@dataclass
class TrainConfig:
    """The training loop's settings; every one is given (params.yaml holds them)."""

    steps: int
    batch_size: int
    uratio: int                        # mu: unlabeled batch = uratio * batch_size
    optimizer: OptimizerConfig
    lr_schedule: str                   # semisup.optim.SCHEDULES
    lr_warmup_steps: int               # linear warm-up of the learning rate from 0
    ema_decay: float
    eval_every: int
    log_every: int
    checkpoint_every: int
    eval_batch_size: int
    last_k: int                        # median / mean over the last k evaluations
    precision: str                     # fp32 | bf16 (autocast on the training device)
    channels_last: bool                # the network's memory format (images)
    compile: bool


@dataclass
class TrainResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    stat_history: list[dict[str, float]]
    steps_per_second: float
    resumed_from: int = 0


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """EMA of parameters; buffers (BatchNorm statistics) copied."""
    ema_params = list(ema_model.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - decay)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


@torch.no_grad()
def evaluate(network: nn.Module, batches: Iterable[Inputs], labels: Tensor,
             autocast) -> dict[str, float]:
    """Cross-entropy and error rate (%) on a labeled set given in batches, in eval mode."""
    was_training = network.training
    network.eval()
    loss_sum = torch.zeros((), device=labels.device)
    wrong = torch.zeros((), device=labels.device, dtype=torch.long)
    start = 0
    for inputs in batches:
        with autocast():
            logits = network(inputs).logits.float()
        batch_labels = labels[start:start + batch_size(inputs)]
        start += batch_size(inputs)
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum")
        wrong += (logits.argmax(dim=-1) != batch_labels).sum()
    network.train(was_training)
    return {"loss": loss_sum.item() / len(labels), "error": 100.0 * wrong.item() / len(labels)}


def summarize(curve: list[dict[str, float]], last_k: int) -> dict[str, float]:
    """Best, last, median and mean of the last k evaluations, for the EMA and the raw model; with
    a validation set, also the test error at the evaluation of the lowest validation error (the
    first of equals: USB's checkpoint selection, which keeps a new best only when it is higher)."""
    metrics = {}
    for model_name in ("ema", "raw"):
        errors = torch.tensor([point[f"{model_name}/error"] for point in curve], dtype=torch.float64)
        tail = errors[-last_k:]
        metrics[f"{model_name}/best_error"] = errors.min().item()
        metrics[f"{model_name}/last_error"] = errors[-1].item()
        metrics[f"{model_name}/median{last_k}_error"] = tail.median().item()
        metrics[f"{model_name}/mean{last_k}_error"] = tail.mean().item()
        if f"{model_name}/validation_error" in curve[0]:
            validation = torch.tensor([point[f"{model_name}/validation_error"] for point in curve])
            best = int(torch.argmin(validation))   # the first of equal minima
            metrics[f"{model_name}/at_best_validation_error"] = errors[best].item()
    return metrics


# Each stream of randomness has its own generator, seeded from the run's seed: the order of the
# labeled and the unlabeled samples, the augmentations, and the draws inside a step.
def stream_seeds(seed: int) -> dict[str, int]:
    return {"labeled": seed * 3 + 1, "unlabeled": seed * 3 + 2, "augment": seed * 3 + 3,
            "step": 2 ** 32 + seed, "host": 2 ** 33 + seed}


class Trainer:
    def __init__(self, network: Network, algorithm: Algorithm, data: TrainData,
                 config: TrainConfig, seed: int, device: torch.device,
                 log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
                 checkpoint_path: Path | None = None,
                 progress: Callable[[str], None] = lambda line: None):
        self.config, self.seed, self.device = config, seed, device
        self.log, self.progress, self.checkpoint_path = log, progress, checkpoint_path
        self.algorithm = algorithm.to(device)
        self.data = data = data.with_labeled_set(algorithm.labeled_set)
        data.modality.reset_state()   # a learning augmentation starts afresh with each run
        self.network = self.assemble(network, algorithm)
        self.ema_network = copy.deepcopy(self.network)
        for parameter in self.ema_network.parameters():
            parameter.requires_grad_(False)
        self.forward_network = torch.compile(self.network) if config.compile else self.network
        self.optimizer = build_optimizer(self.network, config.optimizer)
        # bf16 autocast on the training device: CUDA, or a CPU (fast with AMX / AVX512-BF16).
        self.autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16))
                         if config.precision == "bf16" else nullcontext)
        seeds = stream_seeds(seed)
        self.labeled_sampler = EpochSampler(len(data.labeled_indices),
                                            make_generator(device, seeds["labeled"]))
        self.unlabeled_sampler = EpochSampler(len(data.unlabeled_labels),
                                              make_generator(device, seeds["unlabeled"]))
        self.augment_generator = make_generator(device, seeds["augment"])
        self.step_generator = make_generator(device, seeds["step"])
        self.host_generator = make_generator(torch.device("cpu"), seeds["host"])
        self.extra_evaluations = set(algorithm.evaluation_steps())
        self.step = 0
        self.curve: list[dict[str, float]] = []
        self.stat_sums: dict[str, Tensor] = {}   # per-step statistics since the last log line
        self.stat_counts: dict[str, int] = {}    # steps that reported each statistic
        self.stat_history: list[dict[str, float]] = []   # the averages logged so far

    def assemble(self, network: Network, algorithm: Algorithm) -> Network:
        """The network with the algorithm's heads, on the device: what trains, is averaged by the
        EMA and is checkpointed."""
        network.add_heads(algorithm.heads(network.num_features))
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        network = network.to(device=self.device, memory_format=memory_format)
        algorithm.setup(network)
        return network

    # ---- one step -------------------------------------------------------------------------
    def next_batch(self) -> StepBatch:
        """The labeled batch and, where the algorithm draws one this step, the unlabeled batch,
        each with the views the algorithm declares, made in that order from the augment stream."""
        views, data = self.algorithm.views_at(self.step), self.data
        positions = self.labeled_sampler.next(self.config.batch_size)
        labeled = data.labeled_indices[positions]
        batch = StepBatch(labeled=Side(
            data.modality.views("train", labeled, views.labeled, self.augment_generator),
            labels=data.train_labels[labeled], indices=positions))
        if views.unlabeled:
            unlabeled = self.unlabeled_sampler.next(self.config.batch_size * self.config.uratio)
            batch.unlabeled = Side(
                data.modality.views("unlabeled", unlabeled, views.unlabeled, self.augment_generator),
                labels=data.unlabeled_labels[unlabeled], indices=unlabeled)
        batch.probe = data.modality.probe("train", labeled, batch.labeled.labels,
                                          views.labeled + views.unlabeled, self.augment_generator)
        return batch

    @torch.no_grad()
    def learn_from_probe(self, probe: Probe) -> dict[str, Tensor]:
        """The augmentation learns from the class probabilities of the network it names (the EMA
        or the raw network, as it is before this step's update), in eval mode."""
        network = self.ema_network if probe.network == "ema" else self.network
        was_training = network.training
        network.eval()
        with self.autocast():
            logits = network(probe.inputs).logits.float()
        network.train(was_training)
        return self.data.modality.learn(probe, torch.softmax(logits, dim=-1))

    def train_step(self) -> dict[str, Tensor]:
        batch = self.next_batch()
        probe_stats = {} if batch.probe is None else self.learn_from_probe(batch.probe)
        ctx = StepContext(network=self.forward_network, step=self.step,
                          generator=self.step_generator,
                          teacher=self.ema_network if self.algorithm.needs_teacher else None,
                          host_generator=self.host_generator)
        with self.autocast():
            output = self.algorithm.training_step(ctx, batch)
        self.optimizer.zero_grad()
        output.loss.backward()
        self.optimizer.set_lr_factor(self.lr_factor(self.step))
        self.optimizer.step()
        update_ema(self.ema_network, self.network, self.config.ema_decay)
        self.step += 1
        stats = {**output.stats, **probe_stats}
        stats["loss"] = output.loss.detach()
        return stats

    def lr_factor(self, step: int) -> float:
        """The schedule's multiplier of every group's learning rate at `step`."""
        config = self.config
        return lr_factor(config.lr_schedule, step, config.steps, config.lr_warmup_steps)

    def lr_at(self, step: int) -> float:
        """The base learning rate (the top layer's) at `step`."""
        return self.config.optimizer.lr * self.lr_factor(step)

    # ---- evaluation, checkpoints ----------------------------------------------------------
    def evaluate_both(self) -> dict[str, float]:
        point = {"step": float(self.step)}
        for name, network in (("ema", self.ema_network), ("raw", self.network)):
            result = self.evaluate_network(network)
            point[f"{name}/loss"], point[f"{name}/error"] = result["loss"], result["error"]
            if self.data.validation_labels is not None:
                result = self.evaluate_network(network, "validation")
                point[f"{name}/validation_loss"] = result["loss"]
                point[f"{name}/validation_error"] = result["error"]
        self.curve.append(point)
        self.algorithm.on_evaluation(self.step, point, self.network, self.evaluate_network)
        return point

    def evaluate_network(self, network: nn.Module, pool: str = "test") -> dict[str, float]:
        labels = self.data.validation_labels if pool == "validation" else self.data.test_labels
        return evaluate(network, self.data.modality.batches(pool, self.config.eval_batch_size),
                        labels, self.autocast)

    def state_dict(self) -> dict:
        return {
            "step": self.step, "seed": self.seed, "config": asdict(self.config),
            "network": self.network.state_dict(), "ema_network": self.ema_network.state_dict(),
            "optimizer": self.optimizer.state_dict(), "algorithm": self.algorithm.state_dict(),
            "labeled_sampler": self.labeled_sampler.state_dict(),
            "unlabeled_sampler": self.unlabeled_sampler.state_dict(),
            "augment_generator": self.augment_generator.get_state(),
            "step_generator": self.step_generator.get_state(),
            "host_generator": self.host_generator.get_state(),
            "augmentation": self.data.modality.state_dict(),   # CTAugment's bin rates
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
        self.network.load_state_dict(state["network"])
        self.ema_network.load_state_dict(state["ema_network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.labeled_sampler.load_state_dict(state["labeled_sampler"])
        self.unlabeled_sampler.load_state_dict(state["unlabeled_sampler"])
        self.augment_generator.set_state(state["augment_generator"])
        self.step_generator.set_state(state["step_generator"])
        self.host_generator.set_state(state["host_generator"])
        # Checkpoints from before learning augmentations have no entry: RandAugment has no state.
        self.data.modality.load_state_dict(state.get("augmentation", {}))
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.curve, self.stat_history = state["curve"], state["stat_history"]
        self.stat_sums, self.stat_counts = state["stat_sums"], state["stat_counts"]

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
        self.network.train()
        started = time.perf_counter()
        self.window_start = started
        while self.step < config.steps:
            self.accumulate(self.train_step())
            step = self.step
            if step % config.log_every == 0 or step == config.steps:
                self.log_statistics(step)
            if (step % config.eval_every == 0 or step == config.steps
                    or step in self.extra_evaluations):
                self.evaluate_and_report(step, resumed_from, started)
            # At the end too: a job stopped after training (its outputs or MLflow run not yet
            # complete) resumes at the last step and trains no step again.
            if step % config.checkpoint_every == 0 or step == config.steps:
                self.save_checkpoint()
        steps_per_second = (config.steps - resumed_from) / max(time.perf_counter() - started, 1e-9)
        return TrainResult(metrics=summarize(self.curve, config.last_k), curve=self.curve,
                           stat_history=self.stat_history, steps_per_second=steps_per_second,
                           resumed_from=resumed_from)

    def accumulate(self, stats: dict[str, Tensor]) -> None:
        for key, value in stats.items():
            self.stat_sums[key] = self.stat_sums.get(key, 0) + value.detach().float()
            self.stat_counts[key] = self.stat_counts.get(key, 0) + 1

    def log_statistics(self, step: int) -> None:
        averages = {f"train/{k}": (v / self.stat_counts[k]).item() for k, v in self.stat_sums.items()}
        averages["train/lr"] = self.lr_at(step)   # the next step's
        self.stat_history.append({"step": float(step), **averages})
        self.log(step, averages)
        self.stat_sums, self.stat_counts = {}, {}

    def evaluate_and_report(self, step: int, resumed_from: int, started: float) -> None:
        point = self.evaluate_both()
        self.log(step, {k: v for k, v in point.items() if k != "step"})
        now = time.perf_counter()
        rate = (step - resumed_from) / max(now - started, 1e-9)
        eta = (self.config.steps - step) / max(rate, 1e-9)
        self.progress(f"step {step}/{self.config.steps} ({100 * step / self.config.steps:.0f}%) "
                      f"{rate:.1f} steps/s, ETA {eta:.0f}s, test error ema "
                      f"{point['ema/error']:.2f}% raw {point['raw/error']:.2f}% "
                      f"[{now - self.window_start:.1f}s since last]")
        self.window_start = now
