"""The training job process's torch: CPU numerics pinned before torch is imported (portable
numerics), its threads, and the device it trains on (a GPU claimed by a lock file).

This module imports torch only inside functions: pin_cpu_numerics must run before the import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError
from ..run_config import RunConfig
from .forkserver import FLAVOUR_ENV

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
PORTABLE_CAPABILITY = "AVX2"


def pin_cpu_numerics() -> str | None:
    """train.portable_numerics: the same bits on every x86-64 CPU with AVX2 (Intel since 2013,
    AMD since 2015). Unpinned, ATen's kernels dispatch on the CPU's vector width (AVX2 or
    AVX-512), MKL picks its code path by CPU model and vendor, and oneDNN also blocks by cache
    size: each changes the order of float additions, and a 60-step run on another CI runner
    moved test predictions. Pinned: ATen's AVX2 kernels, MKL's vendor-neutral COMPATIBLE branch
    (its AVX2 branch is for Intel CPUs only), oneDNN and NNPACK off (NNPACK chooses its own
    kernels by CPU; without it the convolutions are ATen's im2col and MKL's GEMM, as fast here).
    Call before torch is imported (or in a job forked from a portable fork server, which
    imported it pinned: pipeline/runs/forkserver.py). Returns a warning where the CPU cannot
    run those kernels (no AVX2, not x86-64): the run goes on, but its numbers will differ from
    other machines'."""
    if "torch" in sys.modules and os.environ.get(FLAVOUR_ENV) != "portable":
        raise UserError("train.portable_numerics pins torch's CPU kernels before torch is "
                        "imported, but this process imported torch already; run the job in a "
                        "fresh process (python -m pipeline.runs.train) or set portable_numerics "
                        "false")
    os.environ.update(PORTABLE_ENV)
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)   # (it has no `enabled` attribute to assign)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        return (f"warning: train.portable_numerics pins x86-64 AVX2 kernels, but this CPU runs "
                f"{capability!r} ones: the numbers will not be bit-identical to other machines'")
    return None


def choose_device(requested: str, source: str = "params.yaml"):
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is 'cuda' (set in {source}) but no CUDA GPU is available "
                        f"here (torch sees none); run on a machine with a GPU, or set "
                        f"train.device to 'auto' or 'cpu' in {source} (for one run: --config "
                        f"train='{{\"device\": \"cpu\", \"portable_numerics\": false}}')")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", claim_gpu(torch.cuda.device_count()))
    return torch.device(requested)


_claimed_gpus: list = []   # open lock files, held for the life of the process


def claim_gpu(count: int, lock_dir: Path | None = None) -> int:
    """Index of a GPU no other training job on this machine holds (an flock per GPU, released
    when the process ends). The default profile runs at most one job per GPU, so one is free;
    Snakemake itself does not tell a job which GPU to use."""
    import fcntl
    import tempfile

    lock_dir = lock_dir or Path(tempfile.gettempdir()) / "ssl-repro-gpu-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        handle = open(lock_dir / f"gpu{index}.lock", "w")  # noqa: SIM115 - held while the job runs
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _claimed_gpus.append(handle)
        return index
    raise UserError(f"all {count} GPU(s) of this machine are held by other training jobs (lock "
                    f"files in {lock_dir}); run at most one training job per GPU: the default "
                    f"profile does (resources gpu=<GPUs>), or pass --resources gpu={count}. "
                    f"Rerun snakemake to run this job once a GPU is free")


def start_torch(run: RunConfig, device_setting: str, threads: int, device_source: str):
    """Import torch (after pinning portable numerics, which must come first), set its threads
    and choose the device: what this job really runs on."""
    if run.train["portable_numerics"]:
        warning = pin_cpu_numerics()
        if warning:
            print(warning, flush=True)
    import torch

    torch.set_num_threads(threads)
    return choose_device(device_setting, device_source)


