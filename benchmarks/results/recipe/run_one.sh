#!/bin/bash
# usage: run_one.sh NAME DATASET SEED [extra finetune flags...]
# one run of plain full finetuning into benchmarks/results/recipe/runs/NAME/DATASET/seedSEED
set -e
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD RIFTUNE_DATA=${RIFTUNE_DATA:-/work/shared/data/medmnist} OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
name=$1; data=$2; seed=$3; shift 3
out=benchmarks/results/recipe/runs/$name/$data/seed$seed
start=$(date +%s)
$PY -m riftune finetune --method full --reg none --data "$data" --seed "$seed" \
  --hessian-iters 0 --landscape-images 0 --bootstrap-resamples 200 --quiet \
  --out "$out" "$@"
echo "$name $data seed$seed $(( $(date +%s) - start ))s" >> benchmarks/results/recipe/timings.txt
