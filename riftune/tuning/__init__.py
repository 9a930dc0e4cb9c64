"""Finetuning methods by name. Importing a module registers the method it defines.

See :mod:`riftune.tuning.base` for the protocol the training engine follows.

Methods import only :mod:`riftune.models`, :mod:`riftune.options` and
:mod:`riftune.registry`.
"""

from riftune.tuning import adaptformer, bitfit, full, linear, lora, lp_ft, oft, vpt  # noqa: F401
from riftune.tuning.adaptformer import AdaptFormer
from riftune.tuning.base import (
    FinetuningMethod,
    available,
    get,
    register,
)
from riftune.tuning.bitfit import BitFit
from riftune.tuning.full import Full
from riftune.tuning.linear import Linear
from riftune.tuning.lora import LoRA
from riftune.tuning.lp_ft import LPFT
from riftune.tuning.oft import OFT
from riftune.tuning.vpt import VPT

__all__ = [
    "LPFT",
    "OFT",
    "VPT",
    "AdaptFormer",
    "BitFit",
    "FinetuningMethod",
    "Full",
    "Linear",
    "LoRA",
    "available",
    "get",
    "register",
]
