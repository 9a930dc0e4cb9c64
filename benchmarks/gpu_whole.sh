#!/usr/bin/env bash
# PneumoniaMNIST's whole-training-set runs of benchmarks/grid_evidence_whole.yaml on the H200 device
# machine: 15 runs at once (one CPU thread each; 16 cores), float32 (the grid's amp: off), in one device call
# of at most 6 minutes. Carry `.whl` and `.device` as for benchmarks/gpu.sh. Brings back
# $OUT/whole.tgz: each run's config.yaml, metrics.json and history.csv, runs.json and the report
# (the checkpoints stay there). Unfinished runs are left out; the CPU can finish them with
# `riftune compare --out benchmarks/results/evidence-whole --grid benchmarks/grid_evidence_whole.yaml`.
set -uo pipefail
RESULTS=${OUT:-/tmp/riftune-whole}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD RIFTUNE_DATA=$PWD/.device/data
GRID_OUT=benchmarks/results/evidence-whole
timeout "${WHOLE_S:-330}" python3 -m riftune compare --out "$GRID_OUT" \
    --grid benchmarks/grid_evidence_whole.yaml --data pneumoniamnist --jobs 15 --quiet
echo "compare exit $?"
find "$GRID_OUT" \( -name metrics.json -o -name config.yaml -o -name history.csv \
    -o -name runs.json -o -name report.md \) -print0 | tar --null -czf "$RESULTS/whole.tgz" -T -
find "$GRID_OUT" -name metrics.json | wc -l
