"""TensorBoardLogger: event files that TensorBoard's own reader gives back; a clear error without it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from riftune.engine.loggers import TensorBoardLogger
from riftune.errors import UserError


def test_scalars_are_read_back_by_tensorboard(tmp_path):
    with TensorBoardLogger(tmp_path / "tb") as logger:
        for step in (1, 2, 3):
            logger.log_scalars(step, {"train/loss": 1.0 / step, "lr": np.float64(1e-3 * step),
                                      "note": "skipped", "flag": True, "missing": None})  # fmt: skip
        logger.log_scalars(3, {"val/auc": 0.75})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/loss", "val/auc"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3], rel=1e-6)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([1e-3, 2e-3, 3e-3], rel=1e-6)
    assert [(e.step, e.value) for e in events.Scalars("val/auc")] == [(3, 0.75)]


def test_missing_tensorboard_is_a_one_line_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install riftune\[tensorboard\]") as caught:
        TensorBoardLogger(tmp_path / "tb")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "tb").exists()


def test_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    with TensorBoardLogger(tmp_path / "tb") as logger:
        for step in range(1, 6):  # crashed after step 5, last checkpoint at step 3
            logger.log_scalars(step, {"train/loss": float(step)})
    with TensorBoardLogger(tmp_path / "tb", purge_step=4) as logger:
        for step in (4, 5, 6):
            logger.log_scalars(step, {"train/loss": 10.0 * step})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0),
    ]  # fmt: skip
