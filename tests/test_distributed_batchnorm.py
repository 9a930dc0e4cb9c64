"""Global BatchNorm: 2 gloo processes on halves of a batch equal one process on the whole batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from riftune.distributed import synchronize_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()  # fmt: skip


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, 6, 6, generator=generator) * 3 + 5).double()


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out.sin() * torch.arange(1, 5, dtype=out.dtype)).sum()


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net = synchronize_batchnorm(_net())
        ddp = DistributedDataParallel(net, broadcast_buffers=False)
        x = _batch()[rank * 4 : (rank + 1) * 4]
        out = ddp(x)
        # the one-process loss is the sum over all rows; each rank holds half of them, and
        # DDP averages gradients over 2 ranks, hence the factor 2
        (2 * _loss(out)).backward()
        grads = [p.grad.clone() for p in net.parameters()]
        buffers = [b.clone() for b in net.buffers()]
        torch.save((out.detach(), grads, buffers), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_matches_one_process_on_the_whole_batch(tmp_path):
    net = _net()
    out = net(_batch())
    _loss(out).backward()
    expected_grads = [p.grad for p in net.parameters()]
    expected_buffers = list(net.buffers())

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)}

    joined = torch.cat([results[0][0], results[1][0]])
    torch.testing.assert_close(joined, out.detach(), rtol=1e-9, atol=1e-9)
    for rank in range(2):
        for got, want in zip(results[rank][1], expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        for got, want in zip(results[rank][2], expected_buffers, strict=True):
            torch.testing.assert_close(got.double(), want.double(), rtol=1e-9, atol=1e-9)
