#!/usr/bin/env bash
# The CPU comparison grid of RESULTS-earlier.md: EfficientNet-Lite0 (shipped ImageNet weights) on the
# real BreastMNIST and PneumoniaMNIST files, in seven parts (grid files beside this script).
# Resumable: run it again and finished runs are skipped, interrupted ones continue.
#   bash benchmarks/cpu_grid.sh [OUT]        (default OUT: runs/cpu_grid)
# Two runs at a time, one thread each (the fastest use of two cores for these small models).
# Needs `riftune` on PATH, e.g. after `. .venv/bin/activate` (make demo or make test create it),
# and the MedMNIST files in $RIFTUNE_DATA (default: ../shared/data/medmnist beside the checkout).
set -euo pipefail
OUT=${1:-runs/cpu_grid}
export OMP_NUM_THREADS=1
export RIFTUNE_DATA=${RIFTUNE_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/medmnist}
for part in full peft linear learned_rank peft_learned q_lr freeze_bn; do
    riftune compare --out "$OUT/$part" --grid "benchmarks/grid_cpu_$part.yaml" --jobs "${JOBS:-2}"
done
