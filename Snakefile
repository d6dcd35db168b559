# ssl-repro: download -> split -> train -> evaluate -> tables, figures.
# `snakemake --cores all` runs the study in params.yaml; `--configfile configs/<study>.yaml`
# merges another study on top of it. Every rule is a thin call of a `pipeline` module:
# `python -m pipeline.<stage>.<module>` (data, runs, reports).
import itertools
import json
import os
import shlex
import sys
from argparse import Namespace
from pathlib import Path

from pipeline.code import code_digest
from pipeline.config import (
    command_line_overrides,
    deep_merge,
    load_params,
    load_study,
    setting_source,
)
from pipeline.errors import USER_ERRORS, report as report_error
from pipeline.reports.figures import figures_for, stats_algorithms
from pipeline.runs.checkpoints import checkpoint_dir
from pipeline.workflow.devices import device_warning, gpu_visible
from pipeline.workflow.inputs import check_existing_inputs, lost_outputs
from pipeline.workflow.overrides import check_overrides
from pipeline.workflow import (
    place_plot_scripts,
    set_job_environment,
    source_fingerprint,
    write_run_configs,
)


configfile: Path(workflow.basedir) / "params.yaml"


try:
    # `--config` values once more, as numbers and booleans (Snakemake leaves nested ones strings).
    COMMAND_LINE = command_line_overrides(workflow.config_settings.config_args)
    # params.yaml and each --configfile read again, strictly: Snakemake's reading keeps the last
    # of a key given twice; this one refuses it, naming the file and both lines.
    CONFIG_FILES = [Path(workflow.basedir, "params.yaml"), *(workflow.overwrite_configfiles or [])]
    load_params(*CONFIG_FILES)
    config.update(deep_merge(config, COMMAND_LINE))
    # Name every file the merged config came from, so an error points at the right one.
    STUDY = load_study(
        config,
        source=" + ".join(
            ["params.yaml", *(Path(f).name for f in workflow.overwrite_configfiles or [])]
        ),
        command_line=COMMAND_LINE,
    )
    if workflow.is_main_process:
        # a one-off override that would overwrite the study's reports (pipeline/workflow/overrides.py)
        check_overrides(STUDY, [Path(f) for f in CONFIG_FILES], COMMAND_LINE)
        # a split or manifest edited by hand, refused whatever has run (pipeline/workflow/inputs.py)
        check_existing_inputs(STUDY)
except USER_ERRORS as error:
    report_error(error)
    sys.exit(2)

# `python` in the rules is this environment's; they import this workflow's own code.
set_job_environment(workflow.basedir)
EXECUTION = STUDY.execution()
# named in a job's error when the device it asks for is not there
DEVICE_SOURCE = setting_source(
    ("train", "device"), workflow.overwrite_configfiles or [], COMMAND_LINE, Path(workflow.basedir)
)

# Training jobs that want a GPU this machine lacks, or that would take hours each on its CPU: said
# now, so that a dry run says it too (pipeline/workflow/devices.py).
if workflow.is_main_process:
    WARNING = device_warning(
        STUDY.config["train"],
        STUDY.config["study"]["model"],
        len(STUDY.config["study"]["n_labels"])
        * len(STUDY.config["study"]["algorithms"])
        * len(STUDY.config["study"]["seeds"]),
        workflow.local_exec,
        gpu_visible(),
        DEVICE_SOURCE,
    )
    if WARNING:
        print(WARNING, file=sys.stderr)

# ---- the study's plan: every row x label budget x seed, then its reports -----------------------
# A row (the {algorithm} wildcard) is a name in study.algorithms: a registered algorithm, or a
# variant of one (params.yaml's `variants:`, pipeline/variants.py) with a results folder, run
# configs, MLflow runs and table row of its own.
DATASET = STUDY.dataset
N_LABELS = STUDY.config["study"]["n_labels"]
SEEDS = STUDY.config["study"]["seeds"]
ALGORITHMS = STUDY.rows
ROW_ALGORITHMS = STUDY.row_algorithms()
# each row's name in the tables, figures and pages: a variant's label, reports.labels, or the
# algorithm's display name
LABELS = json.dumps(STUDY.row_labels(), sort_keys=True)
TRAIN_RUNS = dict(dataset=DATASET, n_labels=N_LABELS, algorithm=ALGORITHMS, seed=SEEDS)
# an algorithm's own figures only where the study has a row of it
FIGURES = figures_for(ALGORITHMS, ROW_ALGORITHMS)
RESULTS = STUDY.results_dir
REPORTS = STUDY.reports_dir
RUN = f"{RESULTS}/{{dataset}}-{{n_labels}}/{{algorithm}}/seed{{seed}}"
TRAIN_JOB = "{dataset}-{n_labels}-{algorithm}-seed{seed}"  # a train job's logs and benchmark
# a train job's resolved run config (its --run-config), written when the workflow starts
RUN_CONFIG = f"{RESULTS}/run_configs/{TRAIN_JOB}.json"
# run_times.html lies outside the committed reports/: its times differ from run to run.
REPORT_PAGES = [f"{REPORTS}/report/tables.html", f"{RESULTS}/report/run_times.html"]
# reports.published: published numbers to put beside ours in tables/published.tex (a path relative
# to the project folder, like params.yaml); without it there is no such table.
PUBLISHED = STUDY.config["reports"].get("published")
PUBLISHED_CSV = str(Path(workflow.basedir, PUBLISHED)) if PUBLISHED else None
PUBLISHED_TABLE = (
    {
        "published": f"{REPORTS}/tables/published.tex",
        "published_model": f"{REPORTS}/tables/published.json",
    }
    if PUBLISHED
    else {}
)


wildcard_constraints:
    dataset="[a-z0-9_]+",
    n_labels=r"\d+",
    algorithm="[a-z0-9_]+",
    seed=r"\d+",
    data_key="[0-9a-f]{12}",


# On a cluster these run on the submitting (login) node: downloads need the internet that compute
# nodes often lack, and the rest take seconds.
localrules:
    all,
    download,
    split,
    evaluate,
    tables,
    figures,
    report_pages,


# ---- what a job needs to know about its run ---------------------------------------------------
def run_of(wildcards, seed=None):
    """The RunConfig of a train job (of seed `seed` for an evaluate job): made once per run."""
    seed = wildcards.seed if seed is None else seed
    return STUDY.run_config(wildcards.dataset, wildcards.n_labels, wildcards.algorithm, seed)


def run_config_files():
    """Every train job's --run-config file and its RunConfig."""
    return {
        RUN_CONFIG.format(dataset=DATASET, n_labels=n, algorithm=a, seed=s): run_of(
            Namespace(dataset=DATASET, n_labels=n, algorithm=a, seed=s)
        )
        for n, a, s in itertools.product(N_LABELS, ALGORITHMS, SEEDS)
    }


def train_code(run):
    """The digest of the code that trains `run` (pipeline/code.py): a change reruns it."""
    return code_digest("pipeline.runs.train", **run.components())


def checkpoints(wildcards, seed=None):
    """A train job's checkpoint folder, outside its outputs (pipeline/runs/checkpoints.py)."""
    run = run_of(wildcards, seed)
    return checkpoint_dir(run, train_code(run))


def published_arguments():
    """The tables rule's arguments for the published numbers' table, "" without one."""
    if not PUBLISHED:
        return ""
    return (
        f"--published {shlex.quote(PUBLISHED_CSV)}"
        f" --published-table {shlex.quote(PUBLISHED_TABLE['published'])}"
    )


def figure_report(name):
    """A figure's PNG in the HTML report (`snakemake --report`), with its caption."""
    return report(
        f"{REPORTS}/figures/{name}.png",
        caption=f"report/figures/{name}.rst",
        category="Figures",
        labels={"figure": name},
    )


def train_jobs_to_run() -> int:
    """How many train jobs this Snakemake run will run (its DAG is built when onstart runs); where
    this Snakemake version's DAG cannot say, as many as a fork server is worth."""
    try:
        return sum(job.rule.name == "train" for job in workflow.dag.needrun_jobs())
    except (AttributeError, TypeError):
        return 2


onstart:
    write_run_configs(run_config_files())
    # beside the page `dvc plots show` writes: it draws without internet (.dvc/plots.html)
    place_plot_scripts()
    # Jobs on a cluster's nodes: a SQLite store on a network file system is refused.
    hosts = "" if workflow.local_exec else "--jobs-on-other-hosts"
    experiment = shlex.quote(STUDY.name)
    shell(f"python -m pipeline.runs.tracking init --experiment {experiment} {hosts}")
    if workflow.local_exec and train_jobs_to_run() > 1:
        # warm starts: the train jobs fork from a process that imports torch and MLflow once
        # (pipeline/runs/forkserver.py), in the background: jobs that start before it is ready
        # run cold. It stops when this Snakemake process ends. For one job it would only import
        # them a second time.
        flavour = "portable" if STUDY.config["train"]["portable_numerics"] else "native"
        owner = os.getpid()
        shell(
            f"python -m pipeline.runs.forkserver_daemon start --owner {owner} --flavour {flavour} --wait 0"
        )


# `snakemake --report reports/<study>/report.html` (after a run) bundles the outputs marked report(...)
# (figures, tables, run times) with this description into one self-contained HTML file.
report: "report/workflow.rst"


# ---- data ---------------------------------------------------------------------------------------
# data/raw/<dataset>/<data key>/: the data key names the dataset options (Study.data_key), so
# studies with other options (e.g. another image folder) never share raw data or splits.
rule download:
    output:
        manifest="data/raw/{dataset}/{data_key}/manifest.json",
    log:
        "logs/download/{dataset}-{data_key}.log",
    params:
        options=lambda w: json.dumps(STUDY.dataset_options(w.dataset), sort_keys=True),
        # a local folder's file names, sizes and times: adding, replacing or deleting a file
        # reruns the download and everything made from it
        source=lambda w: source_fingerprint(STUDY.dataset_options(w.dataset)),
        code=lambda w: code_digest("pipeline.data.download", dataset=w.dataset),
    shell:
        "python -m pipeline.data.download --dataset {wildcards.dataset}"
        " --options {params.options:q} --manifest {output.manifest} > {log} 2>&1"


rule split:
    input:
        manifest="data/raw/{dataset}/{data_key}/manifest.json",
    output:
        split="data/splits/{dataset}/{data_key}/{n_labels}/seed{seed}.json",
    log:
        "logs/split/{dataset}-{data_key}-{n_labels}-seed{seed}.log",
    params:
        code=lambda w: code_digest("pipeline.data.split", dataset=w.dataset),
    shell:
        "python -m pipeline.data.split --manifest {input.manifest}"
        " --n-labels {wildcards.n_labels} --seed {wildcards.seed} --out {output.split} > {log} 2>&1"


# ---- runs ---------------------------------------------------------------------------------------
rule train:
    input:
        manifest=lambda w: STUDY.manifest_path(w.dataset),
        split=lambda w: STUDY.split_path(w.dataset, w.n_labels, w.seed),
    output:
        metrics=f"{RUN}/metrics.json",
        run=f"{RUN}/run.json",
        evaluations=f"{RUN}/evaluations.csv",
        stats=f"{RUN}/train_stats.csv",
    log:
        f"logs/{STUDY.name}/train/{TRAIN_JOB}.log",
    benchmark:
        f"logs/{STUDY.name}/benchmarks/train/{TRAIN_JOB}.tsv"
    threads: EXECUTION["threads"]
    resources:
        gpu=1 if EXECUTION["device"] != "cpu" else 0,
    params:
        # the run config itself: a changed one reruns the job (the job reads it from run_config_file)
        run_config=lambda w: run_of(w).to_json(),
        run_config_file=lambda w: RUN_CONFIG.format(**dict(w.items())),
        code=lambda w: train_code(run_of(w)),
        # outside the declared outputs, so that a killed job keeps them; removed by `evaluate`
        checkpoints=checkpoints,
        device=EXECUTION["device"],
        device_source=shlex.quote(DEVICE_SOURCE),
        # Snakemake deletes {log} before each attempt; this file (not a declared log) keeps
        # every attempt of the run, each beginning with where and when it ran.
        attempts=f"logs/{STUDY.name}/train/attempts/{TRAIN_JOB}.log",
    shell:
        "mkdir -p $(dirname {params.attempts}) &&"
        " python -m pipeline.runs.train --run-config {params.run_config_file}"
        " --manifest {input.manifest} --split {input.split} --out $(dirname {output.metrics})"
        " --checkpoint-dir {params.checkpoints} --device {params.device} --threads {threads}"
        " --device-source {params.device_source}"
        " --code-digest {params.code} 2>&1 | tee -a {params.attempts} > {log}"


rule evaluate:
    input:
        metrics=expand(f"{RUN}/metrics.json", seed=SEEDS, allow_missing=True),
        runs=expand(f"{RUN}/run.json", seed=SEEDS, allow_missing=True),
    output:
        summary=f"{RESULTS}/{{dataset}}-{{n_labels}}/{{algorithm}}/summary.json",
    log:
        f"logs/{STUDY.name}/evaluate/{{dataset}}-{{n_labels}}-{{algorithm}}.log",
    params:
        code=code_digest("pipeline.runs.evaluate"),
        # Snakemake has accepted these runs' outputs: their checkpoints can go
        accepted=lambda w: [checkpoints(w, seed) for seed in SEEDS],
    shell:
        "python -m pipeline.runs.evaluate --metrics {input.metrics} --out {output.summary}"
        " --accepted-checkpoints {params.accepted:q} > {log} 2>&1"


# ---- reports ------------------------------------------------------------------------------------
rule tables:
    input:
        summaries=expand(
            rules.evaluate.output.summary, dataset=DATASET, n_labels=N_LABELS, algorithm=ALGORITHMS
        ),
        published=[PUBLISHED_CSV] if PUBLISHED else [],
    output:
        **PUBLISHED_TABLE,
        table=f"{REPORTS}/tables/main.tex",
        # each table's model beside it: the HTML page renders it (pipeline/reports/table_model.py)
        table_model=f"{REPORTS}/tables/main.json",
        metrics=f"{REPORTS}/metrics.json",
        # the main table's numbers only: what `dvc metrics show/diff` print (dvc.yaml)
        table_metrics=f"{REPORTS}/table_metrics.json",
    log:
        f"logs/{STUDY.name}/tables.log",
    params:
        selection=STUDY.config["reports"]["selection"],
        model=STUDY.config["reports"]["model"],
        published=published_arguments(),
        labels=LABELS,
        code=code_digest("pipeline.reports.tables"),
    shell:
        "python -m pipeline.reports.tables --summaries {input.summaries}"
        " --selection {params.selection} --model {params.model} --table {output.table}"
        " --metrics {output.metrics} --table-metrics {output.table_metrics}"
        " --labels {params.labels:q} {params.published} > {log} 2>&1"


rule figures:
    input:
        evaluations=expand(rules.train.output.evaluations, **TRAIN_RUNS),
        stats=expand(
            rules.train.output.stats,
            **{**TRAIN_RUNS, "algorithm": stats_algorithms(ALGORITHMS, ROW_ALGORITHMS)},
        ),
        # every run's identity and resolved config: each figure picks the runs it draws
        runs=expand(rules.train.output.metrics, **TRAIN_RUNS),
    output:
        pdf=expand(f"{REPORTS}/figures/{{name}}.pdf", name=FIGURES),
        # the error curves as CSV, one per label budget with a column per algorithm: what
        # `dvc plots show` / `dvc plots diff` draw, one chart per budget (dvc.yaml)
        curves=expand(f"{REPORTS}/plots/{{n_labels}}-labels.csv", n_labels=N_LABELS),
        png=[figure_report(name) for name in FIGURES],
    log:
        f"logs/{STUDY.name}/figures.log",
    benchmark:
        f"logs/{STUDY.name}/benchmarks/figures.tsv"
    params:
        figures=" ".join(FIGURES),
        model=STUDY.config["reports"]["model"],
        out=lambda wildcards, output: Path(output.pdf[0]).parent,
        curves=lambda wildcards, output: Path(output.curves[0]).parent,
        labels=LABELS,
        code=code_digest("pipeline.reports.figures"),
    shell:
        "python -m pipeline.reports.figures --evaluations {input.evaluations}"
        " --train-stats {input.stats} --figures {params.figures} --runs {input.runs}"
        " --model {params.model} --labels {params.labels:q} --out {params.out}"
        " --curves {params.curves} > {log} 2>&1"


rule report_pages:
    input:
        tables=[rules.tables.output.table_model]
        + ([rules.tables.output.published_model] if PUBLISHED else []),
        runs=expand(rules.train.output.run, **TRAIN_RUNS),
        benchmarks=expand(rules.train.benchmark, **TRAIN_RUNS),
    output:
        tables=report(REPORT_PAGES[0], caption="report/tables.rst", category="Tables"),
        run_times=report(REPORT_PAGES[1], caption="report/run_times.rst", category="Run times"),
    log:
        f"logs/{STUDY.name}/report_pages.log",
    params:
        labels=LABELS,
        code=code_digest("pipeline.reports.report_pages"),
    shell:
        "python -m pipeline.reports.report_pages --tables {input.tables} --runs {input.runs}"
        " --benchmarks {input.benchmarks} --tables-html {output.tables}"
        " --run-times-html {output.run_times} --labels {params.labels:q} > {log} 2>&1"


# A file of the chain deleted by hand while files made from it are still there: Snakemake alone
# would not remake it ("Nothing to be done"); requested here, it is made again with everything
# that follows from it (pipeline/workflow/inputs.py).
LOST = (
    lost_outputs(
        STUDY,
        train_files=list(rules.train.output),
        summary=rules.evaluate.output.summary,
        reports=[*rules.tables.output, *rules.figures.output],
    )
    if workflow.is_main_process
    else []
)


# Every output of the report rules: Snakemake reruns a rule for a missing output only when that
# output is requested, so a newly added output is made on the next run.
rule all:
    default_target: True
    input:
        rules.tables.output,
        rules.figures.output,
        rules.report_pages.output,
        LOST,
