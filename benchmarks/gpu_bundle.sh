#!/usr/bin/env bash
# Here, on a machine that reaches PyPI: download what benchmarks/gpu_check.sh installs on a lent GPU
# machine, which reaches nothing outside itself, into one folder to carry there (ignored by git):
#   .gpu-bundle/site/       the project's dependencies that the machine's image lacks, and timm
#                           and transformers at the locked versions (benchmarks/gpu_requirements.txt):
#                           CPython 3.12 x86-64 wheels, ~48 MiB
#   .gpu-bundle/semilearn/  semilearn 0.3.2, the peer of benchmarks/peer_step.py, and the two small
#                           packages it imports that the image lacks (progress, ruamel.yaml), ~0.3 MB
#
#   bash benchmarks/gpu_bundle.sh [--semilearn-only] [FOLDER]     (FOLDER: default .gpu-bundle)
#
# GPU_PYTHON_VERSION (default 3.12, the image's python3) picks the wheels' Python version.
set -euo pipefail
cd "$(dirname "$0")/.."
semilearn_only=0
if [[ ${1:-} == --semilearn-only ]]; then semilearn_only=1; shift; fi
bundle=${1:-.gpu-bundle}
python_version=${GPU_PYTHON_VERSION:-3.12}
pip=(python3 -m pip)
"${pip[@]}" --version >/dev/null 2>&1 || { echo "gpu_bundle.sh: needs python3 with pip" >&2; exit 2; }

mkdir -p "$bundle/semilearn"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$bundle/semilearn" \
    semilearn==0.3.2 progress==1.6.1 ruamel.yaml==0.19.1
if [[ $semilearn_only == 1 ]]; then exit 0; fi

# pip matches each manylinux tag exactly: name every one a wheel of these packages may carry.
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_5 manylinux_2_17 manylinux_2_24 manylinux_2_27 \
           manylinux_2_28 manylinux_2_31 manylinux_2_34; do
    platforms+=(--platform "${tag}_x86_64")
done
# connection-pool (needed by Snakemake) is published as source only: built here (pure Python).
source_only='^connection-pool=='
requirements=$(grep -E '^[A-Za-z0-9]' benchmarks/gpu_requirements.txt)
mkdir -p "$bundle/site"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" --dest "$bundle/site" \
    $(grep -v -E "$source_only" <<<"$requirements")
"${pip[@]}" wheel --quiet --no-deps --wheel-dir "$bundle/site" \
    $(grep -E "$source_only" <<<"$requirements")
du -sh "$bundle/site" "$bundle/semilearn"
# A run carries the working tree and this folder, 64 MiB in all (the device README): say how much
# the bundle takes, and stop when the two would not fit.
bundle_bytes=$(du -sb "$bundle" | cut -f1)
tree_bytes=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
awk -v b="$bundle_bytes" -v t="$tree_bytes" 'BEGIN {
    m = 2 ^ 20
    printf "bundle %.1f MiB + tracked tree %.1f MiB = %.1f MiB of the 64 MiB a run carries\n",
           b / m, t / m, (b + t) / m
    exit (b + t > 64 * m) }' || { echo "gpu_bundle.sh: the bundle and the tree exceed 64 MiB" >&2; exit 1; }
