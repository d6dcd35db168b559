"""Rule `train`: one run = (dataset, n_labels, algorithm, seed). Reads the raw data and the split,
trains with `semisup`, logs to MLflow, checkpoints outside the rule's outputs (kept until
Snakemake has accepted them: pipeline/runs/checkpoints.py) and resumes.

Outputs (in --out):
  metrics.json         best/last/median/mean errors (EMA and raw) + config, split and data hashes
                       and the git commit: identical for identical inputs, resumed or not
  run.json             this execution: MLflow run id, wall time, steps/s, resumed-from step,
                       host and SLURM job (also MLflow tags)
  evaluations.csv      the test error curve (every eval_every steps)
  train_stats.csv      per-step statistics averaged over log_every steps
"""
from __future__ import annotations

import csv
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..code import code_digest
from ..errors import UserError, argument_parser, cli
from ..files import atomic_path, read_json, writable_dir, write_json
from ..run_config import RunConfig
from .checkpoints import CHECKPOINT, RUN_RECORD
from .device import start_torch
from .forkserver import FLAVOUR_ENV, exit_now, run_warm
from .tracking import RunLogger, git_commit, git_diff, tracking_uri

def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "step", k))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "step" else v) for k, v in row.items()})


def load_train_data(run: RunConfig, manifest_path: Path, split_path: Path, device):
    """The run's dataset and labeled split, on the training device (semisup's TrainData)."""
    import torch
    from semisup.data import get_dataset
    from semisup.data.image import image_train_data
    from semisup.data.splits import verify_split

    from ..data.download import read_manifest, verify_files

    manifest = read_manifest(manifest_path)
    verify_files(manifest, manifest_path.parent)
    split = read_json(split_path, "split file")
    if split.get("dataset_digest") != manifest["digest"]:
        raise UserError(f"{split_path} was made from other raw data than {manifest_path} "
                        f"describes; delete the split and rerun snakemake to recreate it")
    spec = get_dataset(run.dataset)
    data = spec.load(manifest_path.parent, **manifest["options"])
    indices = torch.tensor(verify_split(split, str(split_path), num_train=len(data.train_labels)))
    if spec.inputs.modality == "audio":
        from semisup.data.audio import audio_train_data

        train_data = audio_train_data(data, indices, audio_augment(run.train), device)
    elif spec.inputs.modality == "text":
        train_data = text_train_data_of(run, data, indices, device, manifest_path.parent,
                                        manifest["digest"])
    else:
        train_data = image_train_data(data, indices, spec.inputs, image_augment(run.train),
                                      run.train["channels_last"], device)
    return train_data, spec.inputs, data.num_classes, manifest, split


def text_train_data_of(run: RunConfig, data, indices, device, raw_dir: Path, data_digest: str):
    """A text dataset tokenised with the tokenizer of the run's network (its name_or_path: token
    ids mean something only to the network whose vocabulary made them), once per study: kept in
    <raw data>/tokens/, named by the tokenizer's fingerprint, max_length and the data's digest."""
    from semisup.data.text import text_train_data, tokenizer_fingerprint
    from semisup.models.bert import load_tokenizer

    options = run.model_options
    if "name_or_path" not in options or "max_length" not in options:
        raise UserError(f"{run.dataset} is a text dataset, but the model {run.model} has no "
                        f"tokenizer (name_or_path and max_length options); use a text network, "
                        f"e.g. study.model: bert_base_uncased")
    tokenizer = load_tokenizer(options["name_or_path"])
    cache = raw_dir / "tokens" / (f"{tokenizer_fingerprint(tokenizer)[:16]}-"
                                  f"{options['max_length']}-{data_digest[:16]}.pt")
    return text_train_data(data, indices, tokenizer, options["max_length"], device, cache)


def train_config(train: dict):
    """The training loop's settings from a run's resolved `train` (the augmentation settings go
    to the data layer; portable_numerics is the process's, applied by start_torch)."""
    from semisup.optim import OptimizerConfig
    from semisup.train import TrainConfig

    optimizer = OptimizerConfig(**{key: train[key] for key in OPTIMIZER_KEYS},
                                name=train["optimizer"])
    return TrainConfig(optimizer=optimizer, **{key: train[key] for key in LOOP_KEYS})


def image_augment(train: dict):
    """The image data layer's augmentation settings from a run's resolved `train`."""
    from semisup.data.ctaugment import CTAugmentSettings
    from semisup.data.image import ImageAugment

    settings = {field: train[key] for key, field in AUGMENT_KEYS.items()}
    settings["ctaugment"] = CTAugmentSettings(**settings["ctaugment"])
    for ranged in ("resized_crop_scale", "resized_crop_ratio"):   # JSON lists -> (low, high)
        settings[ranged] = tuple(settings[ranged])
    return ImageAugment(**settings)


def audio_augment(train: dict):
    """The audio data layer's settings from a run's resolved `train` (its `audio`)."""
    from semisup.data.audio import AudioAugment
    from semisup.data.wave_augment import StrongAudio

    audio = train["audio"]
    strong = {key: tuple(value) if isinstance(value, list) else value
              for key, value in audio["strong"].items()}
    return AudioAugment(**{key: value for key, value in audio.items() if key != "strong"},
                        strong=StrongAudio(**strong))


# The run config's `train` keys, by the library part that takes them.
OPTIMIZER_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "layer_decay")
LOOP_KEYS = ("steps", "batch_size", "uratio", "lr_schedule", "lr_warmup_steps", "ema_decay",
             "eval_every", "log_every", "checkpoint_every", "eval_batch_size", "last_k",
             "precision", "channels_last", "compile")
AUGMENT_KEYS = {"horizontal_flip": "horizontal_flip", "pad_fraction": "pad_fraction",
                "strong_augment": "strong", "ctaugment": "ctaugment",   # train key -> field
                **{key: key for key in ("vertical_flip", "rand_augment_ops", "crop_size",
                                        "strong_crop", "resized_crop_scale", "resized_crop_ratio")}}


def build_trainer(run: RunConfig, data, inputs, num_classes: int, device, logger, name: str,
                  checkpoint_dir: Path):
    import torch
    from semisup.algorithms import ALGORITHMS, build_algorithm
    from semisup.models import build_network
    from semisup.train import Trainer

    config = train_config(run.train)
    torch.manual_seed(run.seed)
    network = build_network(run.model, num_classes, inputs, **run.model_options)
    labeled_set = ALGORITHMS[run.algorithm].labeled_set   # the split's labels, or every one
    algorithm = build_algorithm(run.algorithm, run.algorithm_params,
                                facts=data.facts(num_classes, labeled_set), total_steps=config.steps)
    return Trainer(network, algorithm, data, config, run.seed, device, log=logger.log_metrics,
                   checkpoint_path=checkpoint_dir / CHECKPOINT,
                   progress=lambda line: print(f"{name}: {line}", flush=True))


def mlflow_params(run: RunConfig) -> dict:
    """The resolved configuration, flattened: every option of the dataset, algorithm, network and
    training loop, defaults included."""
    params = {key: getattr(run, key)
              for key in ("study", "dataset", "n_labels", "seed", "algorithm", "model")}
    if run.variant:
        params["variant"] = run.variant
    for prefix, section in (("dataset", run.dataset_options), (run.algorithm, run.algorithm_params),
                            ("model", run.model_options), ("train", run.train)):
        params.update({f"{prefix}.{key}": json.dumps(value, sort_keys=True)
                       if isinstance(value, (dict, list)) else value
                       for key, value in section.items()})
    return params


def process_usage() -> dict:
    """This job process's CPU seconds and peak memory so far. Snakemake's `benchmark:` measures
    the job's command, whose work a warm-started job hands to a process forked from the fork
    server (pipeline/runs/forkserver.py), outside the command's process tree."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10   # bytes on macOS, KiB on Linux
    return {"cpu_seconds": round(cpu, 2), "max_rss_mb": round(usage.ru_maxrss * scale, 1)}


def where_this_runs() -> dict:
    """This attempt's machine and, under SLURM, its job: the tags and run.json keys that link an
    MLflow run to the cluster's records (a resumed attempt records its own)."""
    slurm = {f"slurm_{key.lower()}": os.environ[f"SLURM_{key}"]
             for key in ("JOB_ID", "ARRAY_JOB_ID", "RESTART_COUNT") if os.environ.get(f"SLURM_{key}")}
    return {"host": socket.gethostname(), **slurm}


def mlflow_tags(run: RunConfig, provenance: dict, device) -> dict:
    import torch

    commit = provenance["git_commit"]
    return {"algorithm": run.algorithm, "dataset": run.dataset, "n_labels": run.n_labels,
            "seed": run.seed, "study": run.study, **provenance,
            # a variant's runs are a table row of their own (tracking.CELL_TAGS)
            **({"variant": run.variant} if run.variant else {}),
            "mlflow.source.git.commit": commit.removesuffix("-dirty"),
            # where this attempt ran (tags, so that a resumed attempt records its own)
            "execution.device": str(device), "execution.threads": torch.get_num_threads(),
            "execution.cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{f"execution.{key}": value for key, value in where_this_runs().items()}}


def open_run(run: RunConfig, provenance: dict, device, checkpoint_dir: Path, split_path: Path,
             name: str) -> RunLogger:
    logger = RunLogger(run.study, name, checkpoint_dir / RUN_RECORD,
                       mlflow_tags(run, provenance, device), mlflow_params(run))
    logger.log_input(f"{run.dataset}-{run.n_labels}-split{run.seed}",
                     provenance["split_sha256"], str(split_path.resolve()))
    if provenance["git_commit"].endswith("-dirty"):   # made from uncommitted code: keep the diff
        logger.log_text(git_diff(), "git_diff.patch")
    return logger


def write_outputs(out: Path, run: RunConfig, provenance: dict, result, logger: RunLogger, device,
                  started: float) -> None:
    import torch

    write_csv(out / "evaluations.csv", result.curve)
    write_csv(out / "train_stats.csv", result.stat_history)
    write_json(out / "metrics.json",
               {"metrics": result.metrics, **provenance, "run": run.as_dict()})
    write_json(out / "run.json", {"mlflow_run_id": logger.run_id,
                                  "mlflow_tracking_uri": tracking_uri(),
                                  "wall_seconds": round(time.time() - started, 2),
                                  "steps_per_second": round(result.steps_per_second, 2),
                                  "resumed_from_step": result.resumed_from, "device": str(device),
                                  "threads": torch.get_num_threads(),
                                  # forked from the fork server (warm) or a process of its own
                                  "start": "warm" if os.environ.get(FLAVOUR_ENV) else "cold",
                                  **process_usage(),
                                  **where_this_runs(), **provenance})
    for artifact in ("metrics.json", "evaluations.csv", "train_stats.csv"):
        logger.log_artifact(out / artifact)


def complete_run(logger: RunLogger, run: RunConfig, result, checkpoint: Path) -> None:
    """Everything the trainer logged, in MLflow before the outputs are written: the final
    metrics, values a failing store did not take, and the steps a resumed job did before its
    checkpoint (the checkpoint's history holds each logged value)."""
    logger.log_metrics(run.train["steps"], {f"final/{k}": v for k, v in result.metrics.items()})
    logger.sync([*result.stat_history, *result.curve], result.resumed_from, checkpoint)


def run_provenance(run: RunConfig, code: str | None, split: dict, manifest: dict) -> dict:
    """What identifies the run that made a number (metrics.json, run.json, MLflow tags)."""
    return {"config_hash": run.config_hash,
            "code_digest": code or code_digest("pipeline.runs.train", **run.components()),
            "split_sha256": split["split_sha256"], "dataset_digest": manifest["digest"],
            "git_commit": git_commit()}


def run_name(run: RunConfig) -> str:
    """The MLflow run's name: its table row (a variant's name, else the algorithm's), dataset,
    label budget and seed."""
    return f"{run.row}-{run.dataset}-{run.n_labels}-seed{run.seed}"


def parse_arguments(argv: list[str] | None):
    parser = argument_parser(__doc__)
    parser.add_argument("--run-config", required=True,
                        help="the run's resolved config: the JSON file the workflow writes "
                             "(RunConfig.to_json), or that JSON itself")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--split", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="folder of the outputs")
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device-source", default="params.yaml",
                        help="the config file (or the command line) that set train.device")
    parser.add_argument("--code-digest", help="the digest of the code this run depends on, as "
                        "the workflow computed it (pipeline/code.py); computed here when not given")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    started = time.time()
    # The log keeps every attempt (the rule appends): each begins with where and when it ran.
    print(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')}: attempt on "
          + ", ".join(f"{k} {v}" for k, v in where_this_runs().items()), flush=True)
    run = RunConfig.read(args.run_config)
    writable_dir(args.out)   # fail now, not after training
    writable_dir(args.checkpoint_dir)
    device = start_torch(run, args.device, args.threads, args.device_source)
    data, inputs, num_classes, manifest, split = load_train_data(run, args.manifest, args.split,
                                                                 device)
    provenance = run_provenance(run, args.code_digest, split, manifest)
    name = run_name(run)
    logger = open_run(run, provenance, device, args.checkpoint_dir, args.split, name)
    trainer = build_trainer(run, data, inputs, num_classes, device, logger, name,
                            args.checkpoint_dir)
    print(f"{name}: device {device}, {trainer.config.steps} steps, MLflow run {logger.run_id}",
          flush=True)
    try:
        result = trainer.fit()
        complete_run(logger, run, result, trainer.checkpoint_path)
        write_outputs(args.out, run, provenance, result, logger, device, started)
        logger.finish()
    except BaseException:   # the checkpoint stays: a rerun resumes (after training: at its end)
        logger.fail()
        raise
    logger.supersede_earlier_runs(run)
    print(f"{name}: done; " + ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()
                                         if k.startswith("ema/")), flush=True)


def numerics_flavour(argv: list[str]) -> str | None:
    """The fork server flavour this job needs (its torch imported with portable numerics or
    not); None where the arguments or the run config are wrong (main reports them)."""
    try:
        run = RunConfig.read(parse_arguments(argv).run_config)
    except (UserError, SystemExit):
        return None
    return "portable" if run.train.get("portable_numerics") else "native"


if __name__ == "__main__":
    # a warm start where this study's fork server runs (pipeline/runs/forkserver.py)
    flavour = numerics_flavour(sys.argv[1:])
    code = run_warm("pipeline.runs.train", sys.argv[1:], flavour) if flavour else None
    if code is None:
        main()   # (a user error exits 2 here, a bug with its traceback)
        exit_now(0)
    sys.exit(code)
