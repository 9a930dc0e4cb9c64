"""Regularizers by name. Importing a module registers the regularizer it defines.

Each is an engine-free core (``forward`` of embeddings, feature maps or parameters)
plus a thin adapter the train step calls (:mod:`.base`). They may import metrics, tuning,
models, :mod:`riftune.options`, :mod:`riftune.registry` and :mod:`riftune.distributed`; never
the engine or the configuration.
"""

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
