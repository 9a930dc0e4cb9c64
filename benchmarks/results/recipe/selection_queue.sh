#!/bin/bash
# Step 1, selection on BreastMNIST seed 0 (validation AUC), 28 px, one run at a time.
R=$(dirname "$0")/run_one.sh
$R s28_lr1e-4_e10       breastmnist 0 --img-size 28 --epochs 10 --lr 1e-4 --no-augment
$R s28_lr3e-4_e10       breastmnist 0 --img-size 28 --epochs 10 --lr 3e-4 --no-augment
$R s28_lr3e-4_e20       breastmnist 0 --img-size 28 --epochs 20 --lr 3e-4 --no-augment
$R s28_lr1e-4_e20_aug   breastmnist 0 --img-size 28 --epochs 20 --lr 1e-4 --augment
$R s28_lr3e-4_e20_aug   breastmnist 0 --img-size 28 --epochs 20 --lr 3e-4 --augment
$R s28_lr1e-4_e10_aug   breastmnist 0 --img-size 28 --epochs 10 --lr 1e-4 --augment
$R s28_lr3e-4_e10_aug   breastmnist 0 --img-size 28 --epochs 10 --lr 3e-4 --augment
