"""PhaseTimer: accumulation, nesting, exceptions, the summary and a resume through a checkpoint."""

from __future__ import annotations

import itertools
import time

import pytest

from riftune.engine.timing import PhaseTimer
from riftune.runs import checkpoint_file as ckpt


def stepping_clock(*ticks: float):
    """A clock returning the given readings in turn."""
    readings = iter(ticks)
    return lambda: next(readings)


def test_phases_accumulate_and_nested_phases_count_in_both():
    timer = PhaseTimer(stepping_clock(0.0, 2.0, 10.0, 10.5, 11.0, 14.0))
    with timer.phase("train_steps"):  # 0 -> 2
        pass
    with timer.phase("train_steps"):  # 10 -> 14, with validation 10.5 -> 11 inside
        with timer.phase("validation"):
            pass
    assert timer.as_dict() == {"train_steps": 6.0, "validation": 0.5}
    assert timer.seconds("hessian") == 0.0


def test_time_counts_when_the_phase_raises():
    timer = PhaseTimer(stepping_clock(1.0, 4.0))
    with pytest.raises(KeyError), timer.phase("hessian"):
        raise KeyError("boom")
    assert timer.as_dict() == {"hessian": 3.0}


def test_real_clock_measures_a_sleep():
    timer = PhaseTimer()
    with timer.phase("figures"):
        time.sleep(0.05)
    assert 0.05 <= timer.seconds("figures") < 5.0


def test_known_phases_come_first_in_run_order_then_others_sorted():
    timer = PhaseTimer()
    for name, seconds in [
        ("zeta", 1.0),
        ("test_eval", 2.0),
        ("alpha", 3.0),
        ("reference_pass", 4.0),
    ]:
        timer.add(name, seconds)
    assert list(timer.as_dict()) == ["reference_pass", "test_eval", "alpha", "zeta"]
    with pytest.raises(ValueError, match=">= 0"):
        timer.add("x", -1.0)
    with pytest.raises(ValueError, match="non-empty"), timer.phase(""):
        pass


def test_summary_lists_seconds_calls_shares_and_the_rest():
    timer = PhaseTimer()
    timer.add("train_steps", 30.0)
    timer.add("train_steps", 50.0)
    timer.add("hessian", 10.0)
    lines = timer.summary(total=100.0).splitlines()
    assert lines[0] == "| phase | seconds | calls | share |"
    assert lines[2:] == [
        "| train_steps | 80.0 | 2 | 80% |",
        "| hessian | 10.0 | 1 | 10% |",
        "| other | 10.0 | | 10% |",
    ]
    assert timer.summary().splitlines()[2] == "| train_steps | 80.0 | 2 |"


def test_resume_through_a_checkpoint_keeps_adding(tmp_path):
    counter = itertools.count()
    first = PhaseTimer(lambda: float(next(counter)))
    with first.phase("train_steps"):  # 0 -> 1
        pass
    first.add("checkpointing", 0.25)
    tensors, meta = ckpt.flatten_state({"timing": first.state_dict()})
    path = ckpt.save_checkpoint(tmp_path, "step-1", tensors, meta)
    resumed = PhaseTimer(stepping_clock(5.0, 7.0))
    resumed.load_state_dict(ckpt.unflatten_state(*ckpt.load_checkpoint(path))["timing"])
    with resumed.phase("train_steps"):
        pass
    assert resumed.as_dict() == {"train_steps": 3.0, "checkpointing": 0.25}
    assert "| train_steps | 3.0 | 2 |" in resumed.summary()
