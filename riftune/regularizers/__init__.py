"""Regularizers by name. Importing a module registers the regularizer it defines."""

from riftune.regularizers import (
    cka,  # noqa: F401  (registers "cka")
    delta,  # noqa: F401  (registers "delta")
    feature_distill,  # noqa: F401  (registers "feature-distill")
    l2sp,  # noqa: F401  (registers "l2sp")
    rift,  # noqa: F401  (registers "rift")
    spd,  # noqa: F401  (registers "spd")
)
from riftune.regularizers.base import (
    PretrainedView,
    Regularizer,
    StepInputs,
    available,
    get,
    register,
)
from riftune.regularizers.rift import RIFT

__all__ = ["RIFT", "PretrainedView", "Regularizer", "StepInputs", "available", "get", "register"]
