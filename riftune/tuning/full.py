"""Full finetuning: every parameter of backbone and head learns."""

from __future__ import annotations

from riftune.tuning.base import FinetuningMethod, FrozenMode, register


@register
class Full(FinetuningMethod):
    """Every parameter trains; BatchNorm updates its running statistics (train mode).

    The pretrained function is gone once training starts, so :meth:`pretrained_forward` is
    ``None`` and a regularizer that needs a teacher pass gets a frozen copy from the engine.
    """

    name = "full"

    def is_trainable(self, name: str, phase: str) -> bool:
        return True

    def frozen_mode(self, phase: str) -> FrozenMode:
        return "none"
