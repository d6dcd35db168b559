"""Where the study's training jobs would run, said when the Snakefile is read (a dry run included):
a study that asks for a GPU on a machine without one, and a study whose runs would take longer than
an hour each on a CPU, with an estimate from the measured speed of the networks."""
from __future__ import annotations

import os
import shutil

# Measured: a FixMatch step of WRN-28-2 at B = 64, mu = 7 (960 images of 32x32, forward and
# backward) takes 13.6 s on 2 CPU cores (benchmarks/README.md, train_step.py): 0.028 core-seconds
# per image. Other networks by their floating-point operations per image, forward and backward, at
# their datasets' size, relative to it (torch.utils.flop_counter).
CORE_SECONDS_PER_IMAGE = 13.6 * 2 / 960
# USB's ViTs at their image sizes (forward through the class token, timm's explicit attention).
RELATIVE_WORK = {"wrn_28_2": 1.0, "wrn_28_8": 15.7, "wrn_37_2": 3.0, "cnn32": 0.047,
                 "small_cnn": 0.00072, "vit_tiny_patch2_32": 7.8, "vit_small_patch2_32": 28.3,
                 "vit_small_patch16_224": 21.4, "vit_base_patch16_96": 14.9,
                 # a text of 512 tokens (USB's max_length; shorter texts cost less)
                 "bert_base_uncased": 226.0}
MIN_SECONDS_PER_STEP = 0.01   # a step of the small CNN: Python's own overhead (100 steps/s)
LONG_RUN_SECONDS = 3600       # warn when a run would take longer than this on this CPU


def gpu_visible() -> bool:
    """Whether this machine shows a CUDA GPU (without importing torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return any(d.strip() not in ("", "-1") for d in visible.split(","))
    return shutil.which("nvidia-smi") is not None


def cpu_seconds_per_step(train: dict, model: str) -> float:
    """About how long one training step takes on this machine's CPU with train.threads threads:
    batch_size * (1 + 2 uratio) images (a labeled batch, a weak and a strong unlabeled view)."""
    images = train["batch_size"] * (1 + 2 * train["uratio"])
    work = CORE_SECONDS_PER_IMAGE * RELATIVE_WORK.get(model, 1.0) * images
    return max(MIN_SECONDS_PER_STEP, work / max(1, train["threads"]))


def duration(seconds: float) -> str:
    for unit, length in (("years", 365 * 86400), ("days", 86400), ("hours", 3600),
                         ("minutes", 60)):
        if seconds >= 2 * length:
            return f"{seconds / length:,.0f} {unit}"
    return f"{seconds:.0f} seconds"


def device_warning(train: dict, model: str, n_runs: int, local: bool, gpu: bool,
                   device_source: str = "params.yaml") -> str | None:
    """A warning when the study's training jobs ask for a GPU this machine lacks (run here, not on
    a cluster's nodes), or would run on a CPU for over an hour each; None otherwise."""
    device = train["device"]
    if device == "cuda" and local and not gpu:
        return (f"warning: the study's {n_runs} training job(s) ask for a GPU (train.device "
                f"'cuda', set in {device_source}) and this machine shows none, so each would stop "
                f"when it starts. Run on a GPU machine or a cluster (profiles/README.md), or set "
                f"train.device to 'auto' or 'cpu'.")
    if not (device == "cpu" or (device == "auto" and local and not gpu)):
        return None   # a GPU here, or jobs on a cluster's nodes
    per_step = cpu_seconds_per_step(train, model)
    per_run = train["steps"] * per_step
    if per_run < LONG_RUN_SECONDS:
        return None
    return (f"warning: {n_runs} training run(s) of {train['steps']:,} steps each ({model}, "
            f"{train['batch_size'] * (1 + 2 * train['uratio'])} images a step) are about to run on "
            f"a CPU (train.device {device!r}{', no GPU here' if device == 'auto' else ''}): at about "
            f"{per_step:.3g} s a step with {train['threads']} thread(s) (scaled from the speed "
            f"measured in benchmarks/README.md), each run takes about {duration(per_run)}. They "
            f"want a GPU: "
            f"stop now (Ctrl-C) and run on a GPU machine or a cluster (profiles/README.md), or "
            f"shorten the runs under a name of their own (--config study='{{\"name\": "
            f"\"short\"}}' train='{{\"steps\": 2000}}').")
