#!/usr/bin/env bash
# A setting where plain finetuning erodes retained generalizability (issue 15; RESULTS.md,
# "Where plain finetuning erodes"): full finetuning of EfficientNet-Lite0 on BreastMNIST at
# 28 px with a 10x larger backbone learning rate (1e-3) for 20 epochs, frozen BatchNorm, no
# regularizer; retained k-NN accuracy on PneumoniaMNIST (200 training images per class as the
# k-NN memory). One thread per run; about 4 minutes a run on this project's 2-core CPU.
#   bash benchmarks/erosion.sh [OUT]     (default OUT: runs/erosion)
set -euo pipefail
OUT=${1:-runs/erosion}
export OMP_NUM_THREADS=1
export RIFTUNE_DATA=${RIFTUNE_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/medmnist}
for seed in 0 1 2; do
    riftune finetune --data breastmnist --img-size 28 --epochs 20 --lr 1e-3 \
        --transfer-data pneumoniamnist --transfer-shots 200 --landscape-images 0 \
        --bootstrap-resamples 0 --seed "$seed" --quiet \
        --out "$OUT/breastmnist-full-none-lr1e-3/seed$seed"
done
