"""ssl-repro's FixMatch step against semilearn 0.3.2's own (benchmarks/semilearn_step.py), run
after run: each round starts one process of each (the order swapped every round), so that load
from other processes and the machine's warming hit both alike. Each process times, each after
--warmup untimed ones, --input-batches input batches alone (the data path: sampling,
augmentation, transfer to the device; default --steps), then --steps whole training steps at
the classic shape (WRN-28-2, B=64, mu=7: 960 images per step), and reports peak GPU memory.

- semilearn: its datasets, RandAugment, DataLoaders, FixMatch.train_step, wrn_28_2, optimizer,
  EMA and hooks, in its own environment (--semilearn-site: the folder holding semilearn, put on
  PYTHONPATH of its processes only), fp32 as its classic_cv config says;
- ssl-repro: the real `semisup.train.Trainer` (`next_batch` alone, then `train_step`), set as
  benchmarks/train_step.py's pipeline (b): bf16 autocast and channels_last on CUDA, fp32 on the
  CPU.

    python benchmarks/peer_step.py --device cuda --semilearn-site /tmp/semilearn-site \\
        [--rounds 2] [--steps 50] [--warmup 5] [--input-batches N] [--workers N] [--json F]

--workers: semilearn's labeled loader gets N workers and its unlabeled loader 2N, as its code
does (its config says N = 1); the default, a third of the cores, keeps every core busy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_ours(args) -> dict:
    """One ssl-repro process: input batches, then steps, on the Trainer of train_step.py's (b)."""
    import torch

    sys.path.insert(0, str(HERE))
    from train_step import SslReproStep, synthetic_data, time_steps

    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    load_before = " ".join(f"{value:.2f}" for value in os.getloadavg())
    images_hwc, labels = synthetic_data(args.dataset_size, args.seed)
    images = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
    args.compile, args.model = False, "wrn_28_2"
    step = SslReproStep(images, torch.from_numpy(labels), args.n_labels, args, device,
                        10 * (args.warmup + args.steps) + 10)
    trainer = step.trainer
    input_batches = args.input_batches or args.steps
    input_seconds = time_steps(trainer.next_batch, device, args.warmup, input_batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = time_steps(step, device, args.warmup, args.steps) if args.steps else None
    return {"pipeline": "ssl-repro", "device": args.device, "steps": args.steps,
            "warmup": args.warmup, "images_per_step": args.batch * (1 + 2 * args.uratio),
            "input_batches": input_batches, "load_before": load_before,
            "input_per_second": input_batches / input_seconds,
            "steps_per_second": args.steps / step_seconds if args.steps else None,
            "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2 ** 20
                               if device.type == "cuda" else None)}


def common_arguments(args) -> list[str]:
    return ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--input-batches", str(args.input_batches or args.steps),
            "--batch", str(args.batch), "--uratio", str(args.uratio), "--threads",
            str(args.threads), "--dataset-size", str(args.dataset_size), "--n-labels",
            str(args.n_labels), "--seed", str(args.seed)]


def one_run(pipeline: str, args) -> dict:
    """Start one process of `pipeline`; its last output line is its JSON record."""
    if pipeline == "semilearn":
        command = [sys.executable, str(HERE / "semilearn_step.py"), *common_arguments(args),
                   "--workers", str(args.workers)]
        env = {**os.environ, "PYTHONPATH": str(args.semilearn_site)}
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--run-ours",
                   *common_arguments(args)]
        env = dict(os.environ)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        return {"pipeline": pipeline, "error": f"exit {result.returncode}:\n{tail}"}
    record = json.loads(lines[-1])
    record["process_seconds"] = round(time.perf_counter() - start, 1)
    return record


def summarize(records: list[dict]) -> dict:
    """Median over the runs of each pipeline (of the figures they have), and ssl-repro's ratio to
    semilearn."""
    keys = ("input_per_second", "steps_per_second")
    summary = {}
    for pipeline in ("semilearn", "ssl-repro"):
        runs = [r for r in records if r["pipeline"] == pipeline and "error" not in r]
        if runs:
            summary[pipeline] = {key: median([r[key] for r in runs]) for key in keys}
            summary[pipeline]["peak_memory_mb"] = max(
                (r["peak_memory_mb"] for r in runs if r.get("peak_memory_mb")), default=None)
            summary[pipeline]["runs"] = len(runs)
    if len(summary) == 2:
        summary["ratio"] = {key: (summary["ssl-repro"][key] / summary["semilearn"][key]
                                  if summary["semilearn"][key] else None) for key in keys}
    return summary


def median(values: list) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(records: list[dict], summary: dict, images_per_step: int) -> None:
    print(f"{'pipeline':10s} {'input batches/s':>16s} {'steps/s':>9s} {'images/s':>9s} "
          f"{'peak MB':>8s}  load before (1/5/15 min)")
    for record in records:
        if "error" in record:
            print(f"{record['pipeline']:10s} FAILED: {record['error']}")
            continue
        rate = record["steps_per_second"]
        print(f"{record['pipeline']:10s} {record['input_per_second']:16.2f} {figure(rate, '9.3f'):>9s} "
              f"{figure(rate and rate * images_per_step, '9,.0f'):>9s} "
              f"{figure(record.get('peak_memory_mb'), ',.0f'):>8s}  {record['load_before']}")
    for pipeline, figures in summary.items():
        if pipeline != "ratio":
            print(f"median {pipeline}: input {figures['input_per_second']:.2f} batches/s, step "
                  f"{figure(figures['steps_per_second'], '.3f')} steps/s over {figures['runs']} run(s)")
    if "ratio" in summary:
        ratio = summary["ratio"]
        step = "" if ratio["steps_per_second"] is None else (
            f", whole step {ratio['steps_per_second']:.2f}x")
        print(f"ratio ssl-repro / semilearn: input pipeline "
              f"{figure(ratio['input_per_second'], '.1f')}x{step}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--semilearn-site", type=Path, help="folder with semilearn installed")
    parser.add_argument("--rounds", type=int, default=2, help="processes of each pipeline")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (0: input only)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--input-batches", type=int, help="timed input batches (default: --steps)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--uratio", type=int, default=7)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 3) // 3))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dataset-size", type=int, default=50_000)
    parser.add_argument("--n-labels", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    parser.add_argument("--run-ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.run_ours and (args.semilearn_site is None or
                              not (args.semilearn_site / "semilearn").is_dir()):
        parser.error(f"--semilearn-site {args.semilearn_site}: no semilearn package there "
                     f"(benchmarks/gpu_check.sh installs it from .gpu-bundle/semilearn)")
    return args


def main() -> None:
    args = parse_args()
    if args.run_ours:
        print(json.dumps(run_ours(args)), flush=True)
        return
    records = []
    for round_index in range(args.rounds):
        order = ("semilearn", "ssl-repro") if round_index % 2 == 0 else ("ssl-repro", "semilearn")
        for pipeline in order:
            records.append(one_run(pipeline, args))
            print(f"round {round_index + 1}: {pipeline} done", flush=True)
    summary = summarize(records)
    print(f"\n{args.device}, WRN-28-2, B={args.batch}, mu={args.uratio}, {args.steps} timed after "
          f"{args.warmup} untimed; semilearn workers {args.workers} + {2 * args.workers}")
    report(records, summary, args.batch * (1 + 2 * args.uratio))
    if args.json:
        args.json.write_text(json.dumps({"runs": records, "summary": summary}, indent=2) + "\n")
    if any("error" in record for record in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
