"""Wall time of a Snakemake study (by default the default study of params.yaml) on --cores cores,
and where the train jobs' time goes.

    python benchmarks/study.py [--cores 2] [--workdir DIR] [--keep] [--json OUT.json]
        [--override YAML] [--snakemake-args ARG ...]

Runs `python -m snakemake --snakefile <repo>/Snakefile --cores N [ARG ...]` in a fresh working
folder (a temporary one unless --workdir), so that nothing is reused from earlier runs: the
download, split, train, evaluate, tables and figures jobs all run, with MLflow tracking in that
folder's mlflow.db. A smaller study: --override takes YAML (or JSON) merged on top of
params.yaml, written to override.yaml in the working folder and passed as --configfile:

    python benchmarks/study.py --override '{study: {n_labels: [10], seeds: [0],
        algorithms: [supervised, fixmatch]}, train: {steps: 20, eval_every: 10, log_every: 10}}'

Everything after --snakemake-args goes to Snakemake unchanged (after --cores and --configfile);
the working folder is the temporary one, so give files by absolute path. (Snakemake's own
`--config key='{...}'` hands nested numbers over as strings, which the config schema rejects:
use --override or an absolute --configfile instead.)

Then it reads what the train jobs left behind:
  logs/<study>/benchmarks/train/*.tsv  Snakemake's `benchmark:` of each job: `s` (the job's wall
                                       seconds, shell and interpreter start included);
  results/<study>/.../run.json         `wall_seconds` (from pipeline.runs.train's main(), after the
                                       interpreter started and the pipeline modules imported),
                                       `steps_per_second` of the training loop, and the job
                                       process's `cpu_seconds` and `max_rss_mb` (a warm-started
                                       job runs in a process forked from the fork server, which
                                       the TSV's cpu_time and max_rss do not see);
  results/<study>/.../evaluations.csv  the last evaluated step (the number of steps trained).
and splits each job's seconds into
  start-up  = s - wall_seconds                    (job launch, shell, interpreter, the
                                                   torch-free pipeline modules, a warm start's
                                                   fork; the MLflow calls after run.json is
                                                   written)
  set-up    = wall_seconds - steps / steps/s      (torch and mlflow imports unless the job
                                                   started warm, data, model, MLflow run,
                                                   outputs)
  training  = steps / steps/s                     (Trainer.fit: steps, evaluations, checkpoints)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fork_server_cpu_seconds(workdir: Path, wait: float = 10.0) -> float:
    """The CPU time of the study's fork server, its imports and the jobs forked from it
    (pipeline/runs/forkserver.py): not children of this process, so not in RUSAGE_CHILDREN. The
    server writes it to logs/forkserver.log when it stops, within a second of Snakemake."""
    log, deadline = workdir / "logs" / "forkserver.log", time.monotonic() + wait
    pattern = re.compile(r"stopping \((\d+\.\d) s of CPU")
    while True:
        text = log.read_text() if log.exists() else ""
        found = pattern.findall(text)
        if found or not text or time.monotonic() > deadline:
            return sum(float(value) for value in found)
        time.sleep(0.2)


def read_tsv(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    values = {}
    for key, value in row.items():
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            values[key] = value
    return values


def last_step(evaluations: Path) -> int | None:
    try:
        with open(evaluations, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return int(float(rows[-1]["step"])) if rows else None
    except (OSError, KeyError, ValueError):
        return None


def train_jobs(workdir: Path) -> list[dict]:
    """One record per train job: its benchmark TSV joined with its run.json."""
    jobs = []
    for tsv in sorted(workdir.glob("logs/*/benchmarks/train/*.tsv")):
        study = tsv.parts[-4]
        # {dataset}-{n_labels}-{algorithm}-seed{seed}.tsv; algorithm names have no '-'
        dataset_labels, algorithm, seed = tsv.stem.rsplit("-", 2)
        dataset, n_labels = dataset_labels.rsplit("-", 1)
        run_dir = workdir / "results" / study / f"{dataset}-{n_labels}" / algorithm / seed
        job = {"job": tsv.stem, "algorithm": algorithm, **read_tsv(tsv)}
        try:
            run = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            run = None
        steps = last_step(run_dir / "evaluations.csv")
        if run and "cpu_seconds" in run:   # the job process's own: a warm start forks it
            job["cpu_time"], job["max_rss"] = run["cpu_seconds"], run["max_rss_mb"]
        if run and steps and run.get("steps_per_second"):
            trained = steps - run.get("resumed_from_step", 0)
            job["train_s"] = trained / run["steps_per_second"]
            job["main_s"] = run["wall_seconds"]
            job["steps"] = trained
            job["steps_per_second"] = run["steps_per_second"]
        jobs.append(job)
    return jobs


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
STARTED = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def rule_jobs(log_text: str) -> list[dict]:
    """(rule, start, end) of every job in Snakemake's log: '[date]' then 'rule X:' ... 'jobid: N'
    at the start, '[date]' then 'Finished jobid: N (Rule: X)' at the end (1 s resolution)."""
    stamp, rule, starts, jobs = None, None, {}, []
    for line in log_text.splitlines():
        if match := STAMP.match(line.strip()):
            stamp = time.mktime(time.strptime(match.group(1), "%a %b %d %H:%M:%S %Y"))
            rule = None
        elif (match := STARTED.match(line)) and stamp is not None:
            rule = match.group(1)
        elif (match := JOBID.match(line)) and rule is not None:
            starts[match.group(1)] = (rule, stamp)
            rule = None
        elif (match := FINISHED.match(line)) and match.group(1) in starts:
            rule, start = starts.pop(match.group(1))
            jobs.append({"rule": rule, "start": start, "end": stamp})
            rule = None
    return jobs


def report_rules(jobs: list[dict], launched: float, finished: float) -> dict:
    """Per-rule job count and job-seconds, and the time before the first job / after the last."""
    if not jobs:
        return {}
    rules: dict[str, list[float]] = {}
    for job in jobs:
        rules.setdefault(job["rule"], []).append(job["end"] - job["start"])
    first, last = min(job["start"] for job in jobs), max(job["end"] for job in jobs)
    print("\nper rule (from snakemake.log, 1 s resolution):")
    print(f"  {'before the first job (Snakemake start, DAG, onstart)':54s} "
          f"{max(first - launched, 0):7.0f} s")
    print(f"  {'jobs running (first start to last end)':54s} {last - first:7.0f} s")
    print(f"  {'after the last job':54s} {max(finished - last, 0):7.0f} s")
    print(f"  {'rule':14s} {'jobs':>4s} {'job-seconds':>12s} {'mean s':>7s}")
    for rule, durations in rules.items():
        print(f"  {rule:14s} {len(durations):4d} {sum(durations):12.0f} "
              f"{statistics.mean(durations):7.1f}")
    return {"before_first_job_seconds": round(max(first - launched, 0), 1),
            "jobs_span_seconds": round(last - first, 1),
            "after_last_job_seconds": round(max(finished - last, 0), 1),
            "rules": {rule: {"jobs": len(d), "job_seconds": sum(d)} for rule, d in rules.items()}}


def seconds(value: float) -> str:
    return f"{value:8.1f}"


def report(jobs: list[dict], wall: float, cores: int, cpu: float) -> dict:
    summary = {"wall_seconds": round(wall, 2), "cores": cores,
               "children_cpu_seconds": round(cpu, 2),
               "cpu_utilisation": round(cpu / (wall * cores), 3) if wall > 0 else None,
               "train_jobs": len(jobs)}
    print(f"\nstudy wall time: {wall:.1f} s ({wall / 60:.1f} min) on {cores} cores; CPU time of "
          f"all processes (the fork server's included) {cpu:.1f} s = "
          f"{100 * summary['cpu_utilisation']:.0f}% of {cores} cores x wall")
    if not jobs:
        print("no train benchmark TSVs found (a dry run, or nothing had to run)")
        return summary
    job_seconds = [job["s"] for job in jobs]
    summary.update({
        "train_job_seconds_total": round(sum(job_seconds), 2),
        "train_job_seconds_mean": round(statistics.mean(job_seconds), 2),
        "train_job_seconds_max": round(max(job_seconds), 2),
        "train_job_share_of_core_time": round(sum(job_seconds) / (wall * cores), 3),
    })
    print(f"train jobs: {len(jobs)}, {sum(job_seconds):.1f} job-seconds in all "
          f"({100 * summary['train_job_share_of_core_time']:.0f}% of {cores} cores x wall), "
          f"mean {statistics.mean(job_seconds):.1f} s, max {max(job_seconds):.1f} s")

    split = [job for job in jobs if "train_s" in job]
    if split:
        summary.update(report_job_parts(split))
        summary["by_algorithm"] = report_algorithms(split)
    return summary


def report_job_parts(split: list[dict]) -> dict:
    """Where a train job's wall time goes: start-up, set-up, training."""
    parts = {
        "startup": [job["s"] - job["main_s"] for job in split],
        "setup": [job["main_s"] - job["train_s"] for job in split],
        "training": [job["train_s"] for job in split],
    }
    total = sum(job["s"] for job in split)
    titles = {"startup": "start-up (launch, interpreter, last MLflow calls)",
              "setup": "set-up (data, model, MLflow, outputs)", "training": "training (Trainer.fit)"}
    print(f"\nper train job (mean over {len(split)}; % of the job's wall seconds):")
    for part, values in parts.items():
        print(f"  {titles[part]:44s} {statistics.mean(values):6.1f} s "
              f"{100 * sum(values) / total:5.1f}%")
    return {"per_job_mean_seconds": {k: round(statistics.mean(v), 2) for k, v in parts.items()},
            "per_job_share": {k: round(sum(v) / total, 3) for k, v in parts.items()}}


def report_algorithms(split: list[dict]) -> dict:
    """Per algorithm: job and training seconds, steps/s, CPU seconds, peak memory."""
    by_algorithm: dict[str, list[dict]] = {}
    for job in split:
        by_algorithm.setdefault(job["algorithm"], []).append(job)
    print(f"\n{'algorithm':12s} {'jobs':>4s} {'job s':>8s} {'train s':>8s} {'steps/s':>8s} "
          f"{'cpu s':>8s} {'max RSS MB':>10s}")
    summary = {}
    for algorithm, group in sorted(by_algorithm.items()):
        mean = lambda key, group=group: statistics.mean(float(job.get(key, "nan"))
                                                        for job in group)
        row = {"jobs": len(group), "job_seconds_mean": mean("s"), "train_seconds_mean":
               mean("train_s"), "steps_per_second_mean": mean("steps_per_second"),
               "cpu_seconds_mean": mean("cpu_time"),
               "max_rss_mb": max(float(job.get("max_rss", "nan")) for job in group)}
        summary[algorithm] = {k: round(v, 2) for k, v in row.items()}
        print(f"{algorithm:12s} {row['jobs']:4d} {seconds(row['job_seconds_mean'])} "
              f"{seconds(row['train_seconds_mean'])} {row['steps_per_second_mean']:8.1f} "
              f"{seconds(row['cpu_seconds_mean'])} {row['max_rss_mb']:10.0f}")
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    parser.add_argument("--workdir", type=Path,
                        help="working folder (must be empty or absent; default: a temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary working folder (always kept on failure)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--override", help="YAML/JSON config merged on top of params.yaml "
                                               "(written to override.yaml, given as --configfile)")
    parser.add_argument("--snakemake-args", nargs=argparse.REMAINDER, default=[],
                        help="everything after this goes to snakemake unchanged")
    args = parser.parse_args()
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty: a study there would reuse its outputs")
    if args.override is not None and not isinstance(yaml.safe_load(args.override), dict):
        parser.error("--override must be a YAML/JSON mapping, e.g. '{train: {steps: 20}}'")
    return args


def snakemake_command(args: argparse.Namespace, workdir: Path) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "--cores", str(args.cores)]
    if args.override:
        override = yaml.safe_load(args.override)
        (workdir / "override.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
        command += ["--configfile", "override.yaml"]
    return command + args.snakemake_args


def main() -> None:
    args = parse_args()
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ssl-repro-study-"))
    command = snakemake_command(args, workdir)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    log_path = workdir / "snakemake.log"
    print(f"cwd {workdir}\n$ {' '.join(command)}")
    print(f"before: {uptime()}", flush=True)

    cpu_before = children_cpu_seconds()
    launched = time.time()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=workdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    cpu = children_cpu_seconds() - cpu_before + fork_server_cpu_seconds(workdir)
    print(f"after:  {uptime()}")
    if result.returncode != 0:
        print(f"snakemake failed (exit {result.returncode}); the last lines of {log_path}:")
        print("\n".join(log_path.read_text().splitlines()[-40:]))
        print(f"working folder kept: {workdir}")
        sys.exit(result.returncode)

    summary = report(train_jobs(workdir), wall, args.cores, cpu)
    summary["per_rule"] = report_rules(rule_jobs(log_path.read_text()), launched,
                                       launched + wall)
    summary.update({"command": command, "load_after": uptime()})
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.keep or args.workdir:
        print(f"\nworking folder: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()
