"""The learning-rate schedule: linear warmup, then cosine decay to zero."""

from __future__ import annotations

import math

import pytest
import torch

from riftune.engine.schedule import warmup_cosine


def _lrs(warmup: int, total: int, steps: int, base: float = 0.1) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    scheduler = warmup_cosine(optimizer, warmup, total)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_then_cosine_to_zero():
    warmup, total = 3, 10
    expected = [0.1 * (t + 1) / warmup for t in range(warmup)] + [
        0.1 * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        for t in range(warmup, total)
    ]
    assert _lrs(warmup, total, total) == pytest.approx(expected, rel=1e-12)
    assert _lrs(warmup, total, total + 3)[total:] == pytest.approx([0.0] * 3, abs=1e-15)


def test_no_warmup_starts_at_the_base_rate_and_warmup_is_clipped_to_the_run():
    assert _lrs(0, 4, 1) == [0.1]
    clipped = _lrs(50, 5, 5)  # a warmup longer than the run ends at the base rate
    assert clipped == pytest.approx([0.1 * (t + 1) / 5 for t in range(5)], rel=1e-12)
