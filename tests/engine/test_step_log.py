"""The step log: steps' rows kept as device tensors, read back in one transfer, written exactly,
and a diverged loss caught at its own step with the rows before it kept."""

from __future__ import annotations

import pytest
import torch

from riftune.config import RunConfig
from riftune.distributed import DistributedContext
from riftune.engine.checkpointer import TrainState
from riftune.engine.outputs import LiveOutputs
from riftune.engine.step import NonFiniteLossError
from riftune.engine.step_log import StepLog
from riftune.report.history import read_history_csv
from riftune.runs.folder import RunDir

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _log(tmp_path, every: int) -> tuple[StepLog, TrainState, RunDir]:
    run_dir = RunDir(tmp_path)
    state = TrainState(best_value=0.0)
    state.epoch_sums = {"loss": 0.0, "task": 0.0, "reg": 0.0}
    outputs = LiveOutputs(run_dir, RunConfig.from_dict({}), CPU, state)
    return StepLog(state, outputs, every=every), state, run_dir


def _row(step: int, loss: float) -> dict:
    """A row as the loop builds it: float32 losses, a float lr, float64 λ columns."""
    task = torch.tensor(loss * 0.75, dtype=torch.float32)
    return {
        "step": step,
        "loss": torch.tensor(loss, dtype=torch.float32),
        "reg": torch.tensor(loss * 0.25, dtype=torch.float32),
        "task": task,
        "lr": 1e-3 / step,
        "lam": torch.tensor(0.1 + 1 / 3 * step, dtype=torch.float64),
        "reg_mean": torch.tensor(2 / 7 * step, dtype=torch.float64),
    }


def test_rows_wait_for_a_flush_then_are_written_with_their_exact_values(tmp_path):
    log, state, run_dir = _log(tmp_path, every=3)
    rows = [_row(step, 0.1 * step + 1 / 3) for step in (1, 2, 3)]
    assert [log.add(row) for row in rows] == [False, False, True]
    assert state.steps == [] and not run_dir.steps.exists()  # nothing read back yet
    last = log.flush()
    expected = [{k: (v.item() if torch.is_tensor(v) else v) for k, v in r.items()} for r in rows]
    assert state.steps == expected and last == expected[-1]
    assert read_history_csv(run_dir.steps) == expected  # repr precision: the same floats
    assert state.epoch_sums["loss"] == sum(r["loss"] for r in expected)  # summed in step order
    assert log.flush() is None and len(state.steps) == 3  # nothing pending: nothing written


def test_a_diverged_loss_stops_the_run_at_its_step_keeping_the_rows_before_it(tmp_path):
    log, state, run_dir = _log(tmp_path, every=10)
    for step, loss in [(1, 0.5), (2, 0.4), (3, float("nan")), (4, float("nan"))]:
        log.add(_row(step, loss))
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        log.flush()
    assert [row["step"] for row in state.steps] == [1, 2]
    assert [row["step"] for row in read_history_csv(run_dir.steps)] == [1, 2]
    log.add(_row(5, float("inf")))
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        log.flush()
