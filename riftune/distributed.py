"""Process-group set-up for torchrun, the collectives riftune uses, and BatchNorm that
normalizes over the global batch.

``torchrun --nproc_per_node N -m riftune finetune ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`setup` reads them and joins the group (nccl on CUDA, gloo on the CPU). A plain
``riftune finetune`` is a world of one and initializes nothing.

Every collective of the library lives here: a float64 sum (:func:`all_reduce_sum`), a gather
of rows whose count differs by rank (:func:`all_gather_rows`, and its differentiable form
:func:`gather_global_batch`), and the global BatchNorm. Each is the identity outside an
initialized process group, so single-process code calls them unconditionally.
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


# ------------------------------------------------------------------------- collectives
def in_process_group() -> bool:
    """Whether a default process group is initialized (so results must be reduced)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of ranks of the default process group, or 1 when none is initialized."""
    return dist.get_world_size() if in_process_group() else 1


def rank() -> int:
    """This process's rank in the default process group, or 0 when none is initialized."""
    return dist.get_rank() if in_process_group() else 0


def communication_device() -> torch.device:
    """The device the backend communicates on: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over ranks, in one float64 all-reduce; the identity without a group.

    Shape:
        Any shapes; the result has the shapes, dtype float64, and devices of ``tensors``.
    """
    if not in_process_group():
        return [t.double() for t in tensors]
    device = communication_device()
    flat = torch.cat([t.detach().double().reshape(-1).to(device) for t in tensors])
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].reshape(t.shape).to(t.device))
        offset += t.numel()
    return out


def _gather_padded(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows of ``x`` in rank order, and each rank's row count (not differentiable).

    Rows are padded to the longest rank's count for the gather and cut back after it.

    Shape:
        x: (n_r, ...) on rank r, on the communication device. Returns (Σ_r n_r, ...).
    """
    count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)]), sizes


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` from every rank, concatenated in rank order; row counts may differ.

    Shape:
        t: (n_r, ...) on rank r. Returns (Σ_r n_r, ...) on ``t``'s device.
    """
    if not in_process_group():
        return t
    rows, _ = _gather_padded(t.detach().to(communication_device()))
    return rows.to(t.device)


class _GatherRows(torch.autograd.Function):
    """All-gather of (n_r, d) row blocks whose backward sums the gradients over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rows, sizes = _gather_padded(x)
        ctx.start, ctx.count = sum(sizes[: dist.get_rank()]), x.shape[0]
        return rows

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.count]


def gather_global_batch(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's batch, differentiably; ``x`` itself without a process group.

    Rank r's rows come r-th, so the result is the global batch in rank order. The backward
    pass returns to each rank the gradient of the rows it contributed, **summed over
    ranks**: every rank computes the same loss L on the global batch, so the summed
    gradient is W·∂L/∂x_r, and DDP's averaging of parameter gradients over the W ranks
    then gives exactly the single-process gradient ∂L/∂θ on the global batch. (Without that
    averaging, divide by W.) Batches of different sizes are allowed.

    Shape:
        - x: (n_r, ...) on rank r.
        - output: (Σ_r n_r, ...).
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x)


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
