"""A context that puts a module in eval mode and restores every submodule's own mode after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Eval mode (BatchNorm uses running statistics, dropout is off) inside the block.

    On exit each submodule gets back its own ``training`` flag, so a model with some modules
    deliberately in eval mode (e.g. frozen BatchNorm during finetuning) is left as it was.
    ``None`` is allowed and does nothing.
    """
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
