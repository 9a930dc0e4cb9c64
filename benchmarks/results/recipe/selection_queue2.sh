#!/bin/bash
# Step 1b: lr 3e-4 won so far at the edge of the grid; one run above it (after selection_queue.sh).
R=$(dirname "$0")/run_one.sh
while kill -0 $(cat $(dirname "$0")/selection_queue.pid) 2>/dev/null; do sleep 5; done
$R s28_lr1e-3_e20_aug   breastmnist 0 --img-size 28 --epochs 20 --lr 1e-3 --augment
