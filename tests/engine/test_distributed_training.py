"""``torchrun --nproc_per_node 2`` (gloo, CPU) gives the same run as one process."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = ["--data", "breastmnist", "--img-size", "64", "--shots", "24", "--batch-size", "16",
         "--eval-batch-size", "32", "--epochs", "2", "--reg", "rift", "--rift-match", "paired", "--rift-q", "identity", "--lam", "1",
         "--quiet", "--landscape-images", "32", "--hessian-iters", "2"]  # fmt: skip
# Not bit for bit: summation order differs between one global batch and two all-reduced halves.
# Train-mode BatchNorm over few samples then amplifies float32 rounding step by step (about
# 1e-6 relative at step 1, 1e-3 by step 6 here; with BatchNorm frozen the curves agree to 1e-4,
# and tests/test_distributed_batchnorm.py shows the global BatchNorm exact in float64). So:
# losses within LOSS_TOLERANCE (relative); CKA and ECE within TOLERANCE; accuracy and AUC, which
# move in steps of one image or one pair, within a few steps; sharpness and the Hessian
# eigenvalue, maxima and power iterations over nonconvex losses, within 5%. RIFT's variant is
# fixed here, not the CLI default: optimal Q amplifies the same rounding a little more (0.44%
# on the penalty by step 5); tests/regularizers/test_rift_distributed.py shows every variant
# exact in float64.
LOSS_TOLERANCE = 3e-3
TOLERANCE = 1e-3
LANDSCAPE_TOLERANCE = 0.05
ACC_TOLERANCE = 1.5 / 156
AUC_TOLERANCE = 5 / (42 * 114)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, nproc: int, medmnist_dir: Path, flags: list[str] = FLAGS) -> None:
    env = {**os.environ, "RIFTUNE_DATA": str(medmnist_dir), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "riftune", "finetune"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   "-m", "riftune", "finetune"]  # fmt: skip
    result = subprocess.run(
        command + flags + ["--out", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _steps(out: Path) -> list[dict]:
    with open(out / "steps.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, medmnist_dir):
    _run(tmp_path / "one", 1, medmnist_dir)
    _run(tmp_path / "two", 2, medmnist_dir)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    steps_one, steps_two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert len(steps_one) == len(steps_two) == 2 * (48 // 16)
    for a, b in zip(steps_one, steps_two, strict=True):
        for key in ("loss", "task", "reg", "lr"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_TOLERANCE, abs=1e-6), (a["step"], key)
    for split in ("test", "val"):
        for key in ("cka", "ece"):
            assert two[split][key] == pytest.approx(one[split][key], abs=TOLERANCE), (split, key)
        assert two[split]["acc"] == pytest.approx(one[split]["acc"], abs=ACC_TOLERANCE), split
    assert two["test"]["auc"] == pytest.approx(one["test"]["auc"], abs=AUC_TOLERANCE)
    for key in ("sharpness", "hessian_top_eig"):
        assert two["test"][key] == pytest.approx(one["test"][key], rel=LANDSCAPE_TOLERANCE), key
    assert two["best_epoch"] == one["best_epoch"]
    # only rank 0 wrote: one set of outputs, no stray files from rank 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


# The default recipe (frozen BatchNorm, --reg rift's default variant and weight, the default
# epochs, image size and batch) on 64 training images: 2 steps an epoch, 20 epochs. Sharpness
# and the Hessian are left out (their tolerance is the 5% above).
DEFAULT_RECIPE = ["--data", "breastmnist", "--shots", "32", "--reg", "rift", "--quiet",
                  "--landscape-images", "0"]  # fmt: skip
# Frozen BatchNorm removes the amplification by batch statistics, but not all of it: the two
# processes sum each gradient in another order (float32, ~1e-7 relative), and AdamW divides each
# coordinate by its own running scale, so coordinates whose gradient is mostly cancellation
# carry that rounding into full-size updates. Measured here (2026-12-02, this 2-core CPU, the
# default recipe): the losses agree to 1e-7 over the first 5 steps, 2e-4 at step 10 and within
# 1.8% over all 40 in one run, 5.3% in another (gloo's reduction order is not fixed either); the
# validation AUC of each epoch within 0.007. But that curve is flat, so
# the epoch it selects differed (12 against 2) and with it the test metrics (accuracy 0.49
# against 0.73): selection on a 78-image validation split turns float noise into a different
# model. On 2026-12-06's CPU (another model of the same 2-core kind) the first 5 steps agreed to
# 3e-7, the task loss within 15.3% over all 40 (step 29: 0.1653 against 0.1400) and each
# epoch's validation AUC within 0.020. The bounds below are those measurements with a margin.
EARLY_STEPS, EARLY_TOLERANCE = 5, 1e-4
LOSS_DRIFT, VAL_AUC_DRIFT = 0.25, 0.03


@pytest.mark.slow
def test_two_processes_at_the_default_recipe_drift_only_by_float_noise(tmp_path, medmnist_dir):
    _run(tmp_path / "one", 1, medmnist_dir, DEFAULT_RECIPE)
    _run(tmp_path / "two", 2, medmnist_dir, DEFAULT_RECIPE)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["epochs"] == 20 and two["world_size"] == 2
    steps_one, steps_two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert len(steps_one) == len(steps_two) == 20 * (64 // 32)
    for i, (a, b) in enumerate(zip(steps_one, steps_two, strict=True)):
        rel = EARLY_TOLERANCE if i < EARLY_STEPS else LOSS_DRIFT
        for key in ("loss", "task"):
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-7), (a["step"], key)
    history_one, history_two = _history(tmp_path / "one"), _history(tmp_path / "two")
    for a, b in zip(history_one, history_two, strict=True):
        assert b["val_auc"] == pytest.approx(a["val_auc"], abs=VAL_AUC_DRIFT), a["epoch"]


# The same recipe without RIFT (a penalty of batch statistics) and with --micro-batches 2: one
# process sums the gradients of the two halves of each batch in order, two processes each
# compute one half and all-reduce, and both add g₀/2 + g₁/2, so the runs agree bit for bit.
MICRO_BATCHED = ["--data", "breastmnist", "--shots", "32", "--micro-batches", "2", "--quiet",
                 "--landscape-images", "0"]  # fmt: skip


@pytest.mark.slow
def test_the_same_micro_batches_give_the_same_run_on_one_and_two_processes(tmp_path, medmnist_dir):
    _run(tmp_path / "one", 1, medmnist_dir, MICRO_BATCHED)
    _run(tmp_path / "two", 2, medmnist_dir, MICRO_BATCHED)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["epochs"] == 20 and two["world_size"] == 2
    steps_one, steps_two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert len(steps_one) == 20 * (64 // 32)
    assert [(s["loss"], s["task"]) for s in steps_two] == [
        (s["loss"], s["task"]) for s in steps_one
    ]
    assert two["best_epoch"] == one["best_epoch"]
    for key in ("acc", "auc", "cka", "ece"):  # evaluation batches differ: float noise only
        assert two["test"][key] == pytest.approx(one["test"][key], abs=1e-6), key


def _history(out: Path) -> list[dict]:
    with open(out / "history.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_a_similarity_budget_gives_every_rank_the_lambda_of_one_process(tmp_path, medmnist_dir):
    """λ is updated from the all-reduced penalty, the same number on every rank, so 2 processes
    follow 1 process's λ to the tolerance of the losses above."""
    flags = [*FLAGS, "--target-similarity", "0.995", "--budget-lr", "5"]
    _run(tmp_path / "one", 1, medmnist_dir, flags)
    _run(tmp_path / "two", 2, medmnist_dir, flags)
    steps_one, steps_two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    assert steps_one[0]["lam"] == steps_two[0]["lam"] == 0.0  # an additive budget starts at 0
    assert max(s["lam"] for s in steps_one) > 0  # and the budget binds here
    for a, b in zip(steps_one, steps_two, strict=True):
        for key in ("lam", "reg_mean"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_TOLERANCE, abs=1e-6), (a["step"], key)
