#!/usr/bin/env bash
# The comparison of RESULTS.md (issue 16), one cell of benchmarks/grid_evidence.yaml at a time in
# the order the evidence needs them (so an interrupted session leaves whole cells), then the
# report of everything that finished. Resumable: run it again and finished runs are skipped.
#   bash benchmarks/evidence.sh [OUT]       (default OUT: benchmarks/results/evidence)
# Two runs at a time, one thread each. Needs `riftune` importable (e.g. `. .venv/bin/activate`)
# and the MedMNIST files in $RIFTUNE_DATA (default: ../shared/data/medmnist beside the checkout).
set -euo pipefail
OUT=${1:-benchmarks/results/evidence}
GRID=benchmarks/grid_evidence.yaml
export OMP_NUM_THREADS=1
export RIFTUNE_DATA=${RIFTUNE_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/medmnist}
for cell in breastmnist:50 pneumoniamnist:50 breastmnist:10 pneumoniamnist:10; do
    python -m riftune compare --out "$OUT" --grid "$GRID" --jobs "${JOBS:-2}" \
        --data "${cell%%:*}" --shots "${cell##*:}"
done
python -m riftune compare --out "$OUT" --grid "$GRID" --report-only
