"""What the device-side loop must not change (issue 28): without augmentation a run gives the
per-step losses, λ and D̄, and the per-epoch history, of the code before it (the shipped
EfficientNet-Lite0 on real BreastMNIST images, a binding similarity budget, three epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from riftune.cli import main
from riftune.report.history import read_history_csv

BEFORE = Path(__file__).parents[1] / "fixtures" / "before_device_loop"
FLAGS = ["--data", "breastmnist", "--shots", "20", "--epochs", "3", "--batch-size", "8",
         "--no-augment", "--reg", "rift", "--target-similarity", "0.99", "--no-robustness"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["finetune", *FLAGS, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", ["steps.csv", "history.csv"])
def test_a_run_without_augmentation_gives_the_numbers_of_the_code_before(run, name):
    """Bit for bit on this project's CPU; compared to 1e-6 relative so that another CPU's
    rounding does not fail it. λ rises from 0 here (the budget binds), so its dual ascent on
    the device is compared too."""
    before, now = read_history_csv(BEFORE / name), read_history_csv(run / name)
    assert [set(row) for row in now] == [set(row) for row in before]
    for old, new in zip(before, now, strict=True):
        for key, value in old.items():
            assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, old)
    assert max(row["lam"] for row in before if "lam" in row) > 0.3
