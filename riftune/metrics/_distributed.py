"""Collectives the metrics need: a sum over ranks and a gather of variable-length rows.

Both are the identity outside an initialized ``torch.distributed`` process group. Tensors are
moved to the device the backend communicates on (the current CUDA device for NCCL, the CPU
otherwise) and come back on the device they came from.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group is initialized (and so statistics must be reduced)."""
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over ranks, in one float64 all-reduce; the identity without a group.

    Shape:
        Any shapes; the result has the shapes, dtype float64, and devices of ``tensors``.
    """
    if not is_distributed():
        return [t.double() for t in tensors]
    flat = torch.cat([t.detach().double().reshape(-1).to(_comm_device()) for t in tensors])
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].reshape(t.shape).to(t.device))
        offset += t.numel()
    return out


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` from every rank, concatenated in rank order; row counts may differ.

    Shape:
        t: (n_r, ...) on rank r. Returns (Σ_r n_r, ...) on ``t``'s device.
    """
    if not is_distributed():
        return t
    device = _comm_device()
    local = t.detach().to(device)
    count = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)]).to(t.device)
