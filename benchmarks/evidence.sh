#!/usr/bin/env bash
# The comparison of RESULTS.md (issue 16): benchmarks/grid_evidence.yaml in the order the evidence
# needs it (RIFT and plain on both datasets at 50 images per class, the baselines on BreastMNIST,
# the erosion setting of benchmarks/grid_evidence_erosion.yaml, the baselines on PneumoniaMNIST,
# RIFT at 10 per class, the whole training sets of benchmarks/grid_evidence_whole.yaml, the
# baselines at 10 per class, then LoRA, OFT and linear probing), so an interrupted session leaves
# whole blocks; then the report of all that finished and the defaults rule over both grids.
# Resumable: run it again and finished runs are skipped, interrupted ones continue.
#   bash benchmarks/evidence.sh [OUT]   (default OUT: benchmarks/results/evidence; the erosion
#                                        grid goes to OUT-erosion, the whole sets to OUT-whole)
# Two runs at a time, one thread each. Needs `riftune` importable (e.g. `. .venv/bin/activate`)
# and the MedMNIST files in $RIFTUNE_DATA (default: ../shared/data/medmnist beside the checkout).
set -euo pipefail
OUT=${1:-benchmarks/results/evidence}
GRID=benchmarks/grid_evidence.yaml
export OMP_NUM_THREADS=1
export RIFTUNE_DATA=${RIFTUNE_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/medmnist}
RIFT='none;rift[match=paired,q=identity];rift[match=paired,q=optimal];rift[match=covariance,q=identity]'
RIFT+=';rift[match=paired,q=optimal,target-similarity=0.8];rift[match=paired,q=optimal,target-similarity=0.9]'
RIFT+=';rift[match=paired,q=optimal,target-similarity=0.95]'
RIFT+=';rift[match=paired,q=identity,target-similarity=0.9];rift[match=covariance,q=identity,budget=0.5]'
BASELINES='none;cka[reference=cache];cka[reference=teacher];feature-distill;l2sp;spd'
BASELINES+=';delta[attention-images=16];ftp;ldifs;bss'
run_block() {  # SHOTS REGS DATASET...: one block of the grid
    local shots=$1 regs=$2
    shift 2
    for data in "$@"; do
        python -m riftune compare --out "$OUT" --grid "$GRID" --jobs "${JOBS:-2}" --quiet \
            --data "$data" --shots "$shots" --regs "$regs"
    done
}
run_block 50 "$RIFT" breastmnist pneumoniamnist
run_block 50 "$BASELINES" breastmnist
python -m riftune compare --out "$OUT-erosion" --grid benchmarks/grid_evidence_erosion.yaml \
    --jobs "${JOBS:-2}" --quiet
run_block 50 "$BASELINES" pneumoniamnist
run_block 10 "$RIFT" breastmnist pneumoniamnist
# the whole training sets for the defaults rule (PneumoniaMNIST's ran on a GPU: benchmarks/gpu_whole.sh)
python -m riftune compare --out "$OUT-whole" --grid benchmarks/grid_evidence_whole.yaml \
    --jobs "${JOBS:-2}" --quiet
run_block 10 "$BASELINES" breastmnist pneumoniamnist
# the other finetuning methods at 50 per class, each grid its own folder
for part in methods linear; do
    python -m riftune compare --out "$OUT-$part" --grid "benchmarks/grid_evidence_$part.yaml" \
        --jobs "${JOBS:-2}" --quiet
done
python -m riftune compare --out "$OUT" --grid "$GRID" --report-only
python benchmarks/defaults_rule.py "$OUT" "$OUT-whole"
