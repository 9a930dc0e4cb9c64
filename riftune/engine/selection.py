"""Which validation metric selects the checkpoint, and which value of it is better.

AUC and accuracy are better higher; the loss is better lower. A NaN value (an AUC undefined
on a tiny split) is never better than anything, so it never replaces a real best.
"""

from __future__ import annotations

import math
from typing import Literal

from riftune.errors import UserError

SELECT_ON = ("auc", "acc", "loss")
SelectOn = Literal["auc", "acc", "loss"]


def check_metric(metric_name: str) -> SelectOn:
    """``metric_name`` if it can select a checkpoint.

    Raises:
        UserError: a name other than ``auc``, ``acc`` or ``loss``.
    """
    if metric_name not in SELECT_ON:
        raise UserError(
            f"--select-on {metric_name!r} is not a selection metric; choose one of "
            f"{', '.join(SELECT_ON)}"
        )
    return metric_name  # type: ignore[return-value]


def initial_best(metric_name: str) -> float:
    """The best value before any evaluation: −∞ for AUC and accuracy, +∞ for the loss."""
    return math.inf if check_metric(metric_name) == "loss" else -math.inf


def is_better(metric_name: str, new: float, best: float) -> bool:
    """Whether ``new`` strictly improves on ``best`` (ties keep the earlier checkpoint)."""
    if math.isnan(new):
        return False
    if check_metric(metric_name) == "loss":
        return new < best or math.isnan(best)
    return new > best or math.isnan(best)
