"""RIFT under torch.distributed: 2 real gloo processes, float64, against one process.

A small nn.Linear wrapped in DistributedDataParallel maps each rank's part of a global batch
(uneven: 6 and 4 rows) to embeddings; RIFT's loss and the Linear's gradients after backward
must equal those of one process on the whole batch, for every match × q × stats. Reference
statistics fitted from per-rank shards (in chunks) must equal the full-data fit.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from riftune.regularizers.rift import RIFT

WORLD = 2
SPLIT = [6, 4]  # rows of the global batch on rank 0 and rank 1
IN, DIM = 5, 7
# (match, q, stats, q_rank): learned Q of all DIM dimensions (None) and of rank 4
VARIANTS = [
    ("covariance", q, s, None) for q in ("identity", "learned", "optimal") for s in ("batch", "ema")
]
VARIANTS += [("paired", q, "batch", None) for q in ("identity", "learned", "optimal")]
VARIANTS += [("covariance", "learned", "batch", 4), ("paired", "learned", "batch", 4)]


def _make_data() -> dict:
    g = torch.Generator().manual_seed(0)
    n = sum(SPLIT)
    return {
        "x": torch.randn(n, IN, generator=g, dtype=torch.float64),
        "reference": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "features": torch.randn(53, DIM, generator=g, dtype=torch.float64) * 2 + 1,
        "generator": torch.randn(DIM, DIM, generator=g, dtype=torch.float64),
        "linear": {
            "weight": torch.randn(DIM, IN, generator=g, dtype=torch.float64),
            "bias": torch.randn(DIM, generator=g, dtype=torch.float64),
        },
    }


def _run_variants(model: nn.Module, linear: nn.Linear, data: dict, rows: slice) -> dict:
    """Loss, gradients and running estimates for every variant; the same code on 1 or 2 ranks."""
    results = {}
    for match, q, stats, rank in VARIANTS:
        reg = RIFT(
            DIM, match=match, q=q, q_rank=rank, stats=stats, momentum=0.3, mean_weight=0.3
        ).double()
        reg.fit_reference(data["features"], all_reduce=False)  # every rank holds all of it
        if q == "learned":
            with torch.no_grad():
                reflectors = reg.q.rotation.reflectors
                reflectors.copy_(data["generator"][:, : reflectors.shape[1]])
        model.zero_grad()
        z = model(data["x"][rows])
        loss = reg(z, data["reference"][rows]) if match == "paired" else reg(z)
        loss.backward()
        out = {
            "loss": loss.detach(),
            "weight": linear.weight.grad.clone(),
            "bias": linear.bias.grad.clone(),
        }
        if q == "learned":
            out["generator"] = reg.q.rotation.reflectors.grad.clone()
        if stats == "ema":
            out["running_cov"] = reg.running_cov.clone()
        results[(match, q, stats, rank)] = out
    return results


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        data = torch.load(data_path)
        linear = nn.Linear(IN, DIM).double()
        linear.load_state_dict(data["linear"])
        model = nn.parallel.DistributedDataParallel(linear)
        start = sum(SPLIT[:rank])
        results = _run_variants(model, linear, data, slice(start, start + SPLIT[rank]))
        shard = data["features"][rank::WORLD]  # 27 and 26 rows, streamed in chunks of 5
        fitted = RIFT(DIM, q="optimal", stats="ema").double()
        fitted.fit_reference(torch.split(shard, 5))
        results["fit"] = fitted.state_dict()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(data_path: Path, out_dir: Path, timeout_s: float = 240) -> None:
    ctx = mp.spawn(
        _worker, args=(_free_port(), str(data_path), str(out_dir)), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"the {WORLD} gloo processes did not finish in {timeout_s} s")


def test_two_gloo_ranks_equal_one_process(tmp_path):
    data = _make_data()
    torch.save(data, tmp_path / "data.pt")
    _spawn(tmp_path / "data.pt", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    linear = nn.Linear(IN, DIM).double()
    linear.load_state_dict(data["linear"])
    expected = _run_variants(linear, linear, data, slice(None))
    for variant in VARIANTS:
        for rank, result in enumerate(ranks):
            got = result[variant]
            assert set(got) == set(expected[variant])
            for key, value in expected[variant].items():
                torch.testing.assert_close(
                    got[key], value, rtol=1e-6, atol=1e-6, msg=f"{variant} {key} rank {rank}"
                )

    full = RIFT(DIM, q="optimal", stats="ema").double().fit_reference(data["features"])
    for result in ranks:
        for name, value in full.state_dict().items():
            torch.testing.assert_close(result["fit"][name], value, rtol=1e-12, atol=1e-12)
