#!/bin/bash
# Step 2: the chosen recipe, 3 seeds, BreastMNIST and PneumoniaMNIST full training sets.
# usage: final_queue.sh NAME FLAGS...   (seed 0 of BreastMNIST is reused from the selection run)
R=$(dirname "$0")/run_one.sh
name=$1; shift
for s in 1 2; do $R "$name" breastmnist $s "$@"; done
for s in 0 1 2; do $R "$name" pneumoniamnist $s "$@"; done
