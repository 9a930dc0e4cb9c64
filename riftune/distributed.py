"""Process-group set-up for torchrun, and BatchNorm that normalizes over the global batch.

``torchrun --nproc_per_node N -m riftune finetune ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` reads them and joins the group (nccl on CUDA, gloo on the CPU). A plain
``riftune finetune`` is a world of one and initializes nothing.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

from riftune.errors import UserError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """``obj`` from rank 0 on every rank (identity in a world of one)."""
        if not self.is_distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (so all ranks take the same branch)."""
        if not self.is_distributed:
            return flag
        value = torch.tensor([0 if flag else 1], device=self.device)
        dist.all_reduce(value)
        return int(value.item()) == 0


def setup(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group if there is one and pick this process's device.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"`` (a
            UserError where CUDA is not available).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError(
            "--device cuda: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
            "False); use --device cpu or --device auto"
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
            **({"device_id": target} if use_cuda else {}),
        )
    return DistributedContext(rank, world_size, local_rank, target)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GlobalBatchNorm2d:
    """Mix-in forward for BatchNorm2d (and timm's BatchNormAct2d) over the global batch.

    In training mode the per-channel mean and biased variance come from Σx and the element
    count, then Σ(x − mean)², each all-reduced over ranks (differentiably), so the output and
    the gradients equal those of one process seeing the whole global batch; running
    statistics are updated with the unbiased variance of the global batch, as
    ``nn.BatchNorm2d`` does. In eval mode it is the ordinary forward. Works on every device,
    unlike ``nn.SyncBatchNorm`` (GPU only).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x.float() if x.element_size() < 4 else x  # half precision: statistics in float32
        # two passes (mean, then centred squares) rather than E[x²] − E[x]², which cancels
        # catastrophically in float32 for channels whose mean is large next to their spread
        local = torch.cat([x32.sum(dim=(0, 2, 3)), x32.new_full((1,), x.numel() / channels)])
        total = differentiable_all_reduce(local)
        count = total[-1]
        mean = total[:channels] / count
        centred = x32 - mean.view(1, channels, 1, 1)
        var = differentiable_all_reduce(centred.square().sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 0.0
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels, 1, 1)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        out = out.to(x.dtype)
        if hasattr(self, "act"):  # timm's BatchNormAct2d: normalization, then drop and act
            out = self.act(self.drop(out))
        return out


_GLOBAL_CLASSES: dict[type, type] = {}


def synchronize_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm2d in ``model`` normalize over the global batch (in place).

    Each module keeps its parameters, buffers and identity (so optimizers and state dicts are
    unaffected); only its class changes to a subclass with :class:`_GlobalBatchNorm2d`'s
    forward. Does nothing outside an initialized process group.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.BatchNorm2d) and not issubclass(cls, _GlobalBatchNorm2d):
            if cls not in _GLOBAL_CLASSES:
                _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm2d, cls), {})
            module.__class__ = _GLOBAL_CLASSES[cls]
    return model
