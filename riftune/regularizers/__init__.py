"""Regularizers by name. Importing a module registers the regularizer it defines."""

from riftune.regularizers import (
    bss,  # noqa: F401  (registers "bss")
    cka,  # noqa: F401  (registers "cka")
    delta,  # noqa: F401  (registers "delta")
    feature_distill,  # noqa: F401  (registers "feature-distill")
    ftp,  # noqa: F401  (registers "ftp")
    l2sp,  # noqa: F401  (registers "l2sp")
    ldifs,  # noqa: F401  (registers "ldifs")
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
