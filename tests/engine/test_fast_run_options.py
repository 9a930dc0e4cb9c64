"""``--channels-last`` and ``--checkpoint-seconds`` change how fast a run goes, not what it trains:
real ``riftune finetune`` runs on BreastMNIST (shipped EfficientNet-Lite0, 32 px, 20 images per
class) compared step by step."""

from __future__ import annotations

import csv
import json

import pytest
import safetensors.torch
import torch

from riftune.cli import main

TINY = ["--data", "breastmnist", "--img-size", "32", "--shots", "20", "--batch-size", "16",
        "--eval-batch-size", "64", "--landscape-images", "16", "--bootstrap-resamples", "0",
        "--epochs", "3", "--reg", "rift"]  # fmt: skip


def finetune(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["finetune", *TINY, "--out", str(out), "--quiet", *flags]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def step_losses(out) -> torch.Tensor:
    with open(out / "steps.csv") as handle:
        rows = list(csv.DictReader(handle))
    return torch.tensor([[float(r["loss"]), float(r["task"]), float(r["reg"])] for r in rows])


@pytest.fixture(autouse=True)
def _data(medmnist_dir, monkeypatch):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))


@pytest.mark.slow
def test_channels_last_trains_what_the_plain_layout_trains(tmp_path):
    fast, fast_metrics = finetune(tmp_path, "fast")  # the default: auto, frozen BatchNorm
    plain, plain_metrics = finetune(tmp_path, "plain", "--channels-last", "off")
    assert fast_metrics["channels_last"] is True and plain_metrics["channels_last"] is False
    fast_losses, plain_losses = step_losses(fast), step_losses(plain)
    # the same function: the first step agrees to float32 rounding; AdamW then amplifies the
    # layout's other summation order (1e-7 at step 1, 2e-3 by step 6 on a 2026-12-06 CPU)
    torch.testing.assert_close(fast_losses[0], plain_losses[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-2, atol=1e-4)
    for key in ("auc", "cka", "acc"):
        assert fast_metrics["test"][key] == pytest.approx(plain_metrics["test"][key], abs=5e-3)
    assert fast_metrics["best_epoch"] == plain_metrics["best_epoch"]


def test_train_mode_batchnorm_keeps_the_plain_layout(tmp_path):
    _, metrics = finetune(tmp_path, "bn", "--no-freeze-bn", "--epochs", "1")
    assert metrics["channels_last"] is False


@pytest.mark.slow
def test_checkpoint_seconds_writes_fewer_checkpoints_of_the_same_training(tmp_path):
    """3 epochs of 2 steps: every epoch end writes steps 2, 4, 6 (the newest two kept); with an
    hour between checkpoints only the last epoch's is written. The best model is written with
    them, and the two runs train and select alike."""
    every, every_metrics = finetune(tmp_path, "every", "--checkpoint-seconds", "0")
    sparse, sparse_metrics = finetune(tmp_path, "sparse", "--checkpoint-seconds", "3600")
    names = {out: sorted(p.name for p in (out / "checkpoints").glob("*.safetensors"))
             for out in (every, sparse)}  # fmt: skip
    assert names[every] == ["best.safetensors", "step-00000004.safetensors",
                            "step-00000006.safetensors"]  # fmt: skip
    assert names[sparse] == ["best.safetensors", "step-00000006.safetensors"]
    assert (every / "steps.csv").read_text() == (sparse / "steps.csv").read_text()
    assert every_metrics["test"] == sparse_metrics["test"]
    best = [safetensors.torch.load_file(out / "checkpoints" / "best.safetensors")
            for out in (every, sparse)]  # fmt: skip
    assert best[0].keys() == best[1].keys()
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])
