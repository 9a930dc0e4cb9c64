"""What training under torchrun adds to one process's step: the DistributedDataParallel wrapper
of the model, and the losses of the global batch (the mean over ranks)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from riftune.distributed import DistributedContext


def wrap_model(model: nn.Module, ctx: DistributedContext) -> DistributedDataParallel:
    """``model`` in DistributedDataParallel over ``ctx``'s ranks, over the parameters that
    require a gradient now (wrap again when they change). Buffers are not broadcast: BatchNorm
    is synchronized (:func:`riftune.distributed.synchronize_batchnorm`) or frozen."""
    return DistributedDataParallel(
        model,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def mean_over_ranks(
    losses: dict[str, torch.Tensor], ctx: DistributedContext
) -> dict[str, torch.Tensor]:
    """The losses of the global batch: the mean over ranks of each rank's (equal-sized) batch.

    Nothing is read back to the host: the values stay scalar tensors on the device (one
    all-reduce of the stacked losses when distributed).

    Args:
        losses: scalar tensors by name, this rank's.

    Returns:
        The same names, as float32 scalar tensors, equal on every rank.
    """
    names = sorted(losses)
    stacked = torch.stack([losses[k].float() for k in names])
    if ctx.is_distributed:
        torch.distributed.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(names, stacked.unbind(), strict=True))
