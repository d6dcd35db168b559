#!/usr/bin/env bash
# One prepared GPU check (issue 32): everything the GPU path has to show, in one command that ends
# within 8 minutes on one GPU (benchmarks/README.md, "gpu_check.sh: the one GPU check", says how to
# run it on a lent machine, what to carry and what comes back).
#
#   bash benchmarks/gpu_check.sh               on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke   every part at tiny sizes on the CPU (a slow test)
#
# Parts, in this order, each stopped at its own time limit (seconds; all of them together at most
# GPU_CHECK_BUDGET, default 470) so that one hang cannot eat the rest (GPU_CHECK_PARTS, e.g.
# "environment:20 peer:110", runs others or other limits):
#   install       60  the project's dependencies the machine lacks (timm and transformers at the
#                     locked versions among them), from .gpu-bundle/site, into a folder first on
#                     PYTHONPATH (skipped where they all import); semilearn, from
#                     .gpu-bundle/semilearn, into a separate folder for its own processes
#   environment   20  GPU, driver, Python, torch and package versions, cores, load
#   cuda_tests    90  the CUDA tests: no host synchronisation in any algorithm's step, a small ViT
#                     and a tiny BERT under bf16 (timm, transformers from the bundle), CUDA ops
#   train_step    90  benchmarks/train_step.py --device cuda: conventional pipeline vs ssl-repro
#   peer         110  benchmarks/peer_step.py: semilearn 0.3.2's own FixMatch step vs ssl-repro's,
#                     alternating run by run
#   augment       30  benchmarks/augment.py --device cuda
#   smoke_study  150  the GPU smoke study end to end (configs/gpu-smoke.yaml, benchmarks/study.py)
#   compile      150  benchmarks/train_step.py --device cuda --compile (ssl-repro's pipeline)
#
# Writes into $OUT when set, else logs/gpu-check/ (at most 8 files, no sub-folders):
#   summary.txt  each part's status and seconds, then its figures;  check.log  every part's output;
#   environment.txt;  smoke_study.json (benchmarks/study.py --json);  smoke_metrics.json (the smoke
#   study's error rates);  peer.json (every semilearn and ssl-repro run).
# Exit status: 0 when every part passed, else 1.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

part_install() {
    if [[ -n ${SITE_NEEDED:-} ]]; then
        if [[ ! -d $BUNDLE/site ]]; then
            echo "no $BUNDLE/site: run benchmarks/gpu_bundle.sh and carry .gpu-bundle"
            return 1
        fi
        install_wheels "$SITE" "$BUNDLE"/site/*.whl || return 1
    else
        echo "snakemake, mlflow, jsonschema, timm and transformers import: nothing to install from $BUNDLE/site"
    fi
    if compgen -G "$BUNDLE/semilearn/semilearn-*.whl" >/dev/null; then
        install_wheels "$SEMILEARN_SITE" "$BUNDLE"/semilearn/*.whl
    else
        echo "no semilearn wheel in $BUNDLE/semilearn (benchmarks/gpu_bundle.sh): the peer part fails"
    fi
    "$PYTHON" -c "import snakemake, mlflow, jsonschema, semisup, pipeline; print('imports ok')" &&
    "$PYTHON" -c "import timm, transformers; print(f'timm {timm.__version__} from {timm.__file__}');
print(f'transformers {transformers.__version__} from {transformers.__file__}')"
}

install_wheels() {   # install_wheels FOLDER WHEEL...: without an index, without dependencies
    local target=$1; shift
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-cache-dir --target "$target" "$@"
    else   # a uv-made environment has no pip
        uv pip install --quiet --python "$PYTHON" --no-index --no-deps --target "$target" "$@"
    fi && echo "installed $# wheels into $target"
}

part_environment() {
    { date -u; uname -a; nproc; uptime
      command -v nvidia-smi >/dev/null && nvidia-smi
      "$PYTHON" - <<'EOF'
import importlib.metadata as metadata, platform, torch
print(f"Python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    memory = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    print(f"GPU: {torch.cuda.get_device_name()}, {memory:.0f} GiB")
for name in ("numpy", "torchvision", "snakemake", "mlflow-skinny", "jsonschema", "pillow", "triton",
             "timm", "transformers", "tokenizers", "huggingface-hub", "safetensors"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} not installed")
EOF
      git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || echo "commit: no git here"
    } 2>&1 | tee "$OUT/environment.txt"
}

part_cuda_tests() {
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
        tests/test_augment.py::test_ops_on_cuda_equal_ops_on_cpu \
        tests/test_ctaugment.py::test_ops_on_cuda_equal_ops_on_cpu
}

part_train_step() {
    if [[ $SMOKE == 1 ]]; then
        "$PYTHON" benchmarks/train_step.py --device cpu "${TINY_STEP[@]}" --dataset-size 64 \
            --n-labels 10 --workers 1 --augment-repeats 1
    else
        "$PYTHON" benchmarks/train_step.py --device cuda --steps 100 --warmup 10
    fi
}

part_peer() {
    if [[ $SMOKE == 1 ]]; then
        "$PYTHON" benchmarks/peer_step.py --device cpu --semilearn-site "$SEMILEARN_SITE" \
            --rounds 1 "${TINY_STEP[@]}" --dataset-size 200 --n-labels 40 --workers 1 --json "$OUT/peer.json"
    else
        "$PYTHON" benchmarks/peer_step.py --device cuda --semilearn-site "$SEMILEARN_SITE" \
            --rounds 2 --steps 30 --warmup 5 --json "$OUT/peer.json"
    fi
}

part_augment() {
    if [[ $SMOKE == 1 ]]; then
        "$PYTHON" benchmarks/augment.py --device cpu --batch 8 --repeats 1 --threads 1
    else
        "$PYTHON" benchmarks/augment.py --device cuda --repeats 20
    fi
}

part_smoke_study() {
    local configs=("$ROOT/configs/gpu-smoke.yaml") cores
    cores=$(nproc)
    if [[ $SMOKE == 1 ]]; then   # one FixMatch run of 2 tiny steps on the CPU
        cat >"$WORK/cpu-smoke.yaml" <<'EOF'
study: {algorithms: [fixmatch]}
train: {device: cpu, steps: 2, batch_size: 2, uratio: 1, eval_every: 2, log_every: 1,
        checkpoint_every: 2, last_k: 1, precision: fp32, channels_last: false}
EOF
        configs+=("$WORK/cpu-smoke.yaml"); cores=2
    fi
    "$PYTHON" benchmarks/study.py --cores "$cores" --workdir "$WORK/smoke" \
        --json "$OUT/smoke_study.json" --snakemake-args --configfile "${configs[@]}" || return 1
    cp "$WORK/smoke/reports/gpu-smoke/metrics.json" "$OUT/smoke_metrics.json" || return 1
    "$PYTHON" - "$OUT/smoke_metrics.json" <<'EOF'
import json, sys
for cell, algorithms in json.load(open(sys.argv[1])).items():
    for name, figures in algorithms.items():
        print(f"smoke study error {cell} {name}: EMA best {figures['ema/best_error']:.2f} %, "
              f"raw last {figures['raw/last_error']:.2f} %")
EOF
}

part_compile() {
    if [[ $SMOKE == 1 ]]; then   # the command line, not the compiler: minutes on two CPU cores
        TORCH_COMPILE_DISABLE=1 "$PYTHON" benchmarks/train_step.py --device cpu --compile \
            --pipelines b "${TINY_STEP[@]}" --dataset-size 64 --n-labels 10 --augment-repeats 0
    else
        "$PYTHON" benchmarks/train_step.py --device cuda --compile --pipelines b --steps 200 \
            --warmup 10 --augment-repeats 0
    fi
}

PARTS="install:60 environment:20 cuda_tests:90 train_step:90 peer:110 augment:30"
PARTS+=" smoke_study:150 compile:150"
# the lines of each part's output that summary.txt repeats under "figures"
declare -A FIGURES=(
    [environment]='^(Python|GPU:)'
    [cuda_tests]='(passed|failed|skipped|error)'
    [train_step]='^(==|\(a\)|\(b\)|ratio|augmentation alone)'
    [peer]='^(semilearn|ssl-repro|median|ratio|cpu,|cuda,)'
    [augment]='^(fixmatch|usb|ctaugment) '
    [smoke_study]='^(study wall time|smoke study error|fixmatch |supervised |dash )'
    [compile]='^\(b\)'
)

run_part() {   # run_part NAME LIMIT: the part in a child process, stopped after LIMIT seconds
    local name=$1 limit=$2 left status started
    left=$((BUDGET - SECONDS))
    if ((left < 5)); then
        printf '%-12s skipped: the %ss budget is spent\n' "$name" "$BUDGET" >>"$STATUS"
        return
    fi
    ((limit > left)) && limit=$left
    started=$SECONDS
    timeout --kill-after=10 "$limit" bash "${BASH_SOURCE[0]}" --part "$name" >"$WORK/$name.log" 2>&1
    status=$?
    case $status in
        0) status=ok ;;
        124 | 137) status="TIMED OUT at ${limit}s" ;;
        *) status="FAILED (exit $status)" ;;
    esac
    printf '%-12s %-22s %4ds (limit %ds)\n' "$name" "$status" $((SECONDS - started)) "$limit" \
        | tee -a "$STATUS"
    { echo "=== $name: $status"; cat "$WORK/$name.log"; echo; } >>"$OUT/check.log"
    [[ -n ${FIGURES[$name]:-} ]] &&
        { echo "--- $name"; grep -E "${FIGURES[$name]}" "$WORK/$name.log" | head -40; } >>"$WORK/figures"
}

setup() {
    SMOKE=0
    [[ ${1:-} == --cpu-smoke ]] && SMOKE=1
    OUT=${OUT:-$ROOT/logs/gpu-check}
    mkdir -p "$OUT" && rm -f "$OUT"/{summary.txt,check.log,environment.txt,peer.json} \
        "$OUT"/{smoke_study.json,smoke_metrics.json}
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ssl-repro-gpu-check.XXXXXX")
    BUNDLE=${GPU_BUNDLE:-$ROOT/.gpu-bundle}
    SITE=$WORK/site SEMILEARN_SITE=$WORK/semilearn-site STATUS=$WORK/status
    PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x $PYTHON ]] || PYTHON=python3
    BUDGET=${GPU_CHECK_BUDGET:-470}
    export PYTHONPATH="$ROOT/ssl:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    if ! "$PYTHON" -c "import snakemake, mlflow, jsonschema, timm, transformers" 2>/dev/null; then
        SITE_NEEDED=1 PYTHONPATH="$SITE:$PYTHONPATH"
    fi
    export SMOKE OUT WORK BUNDLE SITE SITE_NEEDED SEMILEARN_SITE PYTHON
}

main() {
    setup "$@"
    trap 'rm -rf "$WORK"' EXIT
    echo "gpu_check: $( ((SMOKE)) && echo 'CPU smoke run' || echo 'GPU check'), output in $OUT," \
        "python $PYTHON"
    local entry
    for entry in ${GPU_CHECK_PARTS:-$PARTS}; do
        run_part "${entry%%:*}" "${entry#*:}"
    done
    { echo "gpu_check $( ((SMOKE)) && echo '--cpu-smoke') finished $(date -u) after ${SECONDS}s"
      cat "$STATUS"; echo; echo "figures:"; cat "$WORK/figures"; } >"$OUT/summary.txt"
    echo "summary: $OUT/summary.txt"
    ! grep -qvE '^\S+ +ok ' "$STATUS"
}

if [[ ${1:-} == --part ]]; then
    TINY_STEP=(--steps 1 --warmup 1 --batch 2 --uratio 1 --threads 1)
    "part_$2"
else
    main "$@"
fi
