"""Checkpoint selection: the direction of each metric, NaN never selected."""

from __future__ import annotations

import math

import pytest

from riftune.engine.selection import initial_best, is_better
from riftune.errors import UserError


@pytest.mark.parametrize("metric", ["auc", "acc"])
def test_higher_is_better_for_auc_and_accuracy(metric):
    best = initial_best(metric)
    assert best == -math.inf and is_better(metric, 0.0, best)
    assert is_better(metric, 0.8, 0.7) and not is_better(metric, 0.7, 0.8)
    assert not is_better(metric, 0.7, 0.7)  # a tie keeps the earlier checkpoint


def test_lower_is_better_for_the_loss():
    best = initial_best("loss")
    assert best == math.inf and is_better("loss", 5.0, best)
    assert is_better("loss", 0.3, 0.4) and not is_better("loss", 0.4, 0.3)


@pytest.mark.parametrize("metric", ["auc", "acc", "loss"])
def test_nan_is_never_better_and_any_value_beats_a_nan_best(metric):
    assert not is_better(metric, math.nan, initial_best(metric))
    assert is_better(metric, 0.5, math.nan)


def test_an_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="--select-on 'f1'"):
        initial_best("f1")
    with pytest.raises(UserError):
        is_better("f1", 1.0, 0.0)
