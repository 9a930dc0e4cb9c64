"""Two real gloo processes: each metric over shards equals one process over the whole data."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from riftune.metrics import (
    StreamingCKA,
    collect,
    hessian_top_eigenvalue,
    linear_cka,
    sharpness,
)
from riftune.models.classifier import Classifier

WORLD = 2
pytestmark = pytest.mark.slow  # two fresh interpreters import torch: 30-60 s on a busy machine


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest on one intra-op thread (and avoid OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=g, dtype=torch.float64) + 2.0
    y = x @ torch.randn(5, 7, generator=g, dtype=torch.float64) + torch.randn(
        37, 7, generator=g, dtype=torch.float64
    )
    return x, y


def _items():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(7, 3, 2, 2, generator=g)
    return [(images[i], torch.tensor(i % 2), torch.tensor(i)) for i in range(7)]


def _classifier() -> Classifier:
    torch.manual_seed(2)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4))
    return Classifier(backbone, num_features=4, num_classes=2, pretrained_cfg={})


def _network() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches():
    g = torch.Generator().manual_seed(4)
    return [
        (
            torch.randn(6, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (6,), generator=g),
        )
        for _ in range(4)
    ]


def _cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x, y = _pairs()
        shard = torch.arange(rank, len(x), WORLD)  # 19 and 18 rows
        results = {}
        for debiased in (False, True):
            metric = StreamingCKA(debiased=debiased)
            for part in shard.tensor_split(3):
                metric.update(x[part], y[part])
            metric.update(x[:0], y[:0])  # an empty batch is allowed
            results[f"cka_{debiased}"] = float(metric.compute())

        items = _items()
        sampler = DistributedSampler(items, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
        model = _classifier()
        model.train()
        got = collect(model, DataLoader(items, batch_size=2, sampler=sampler), "cpu")
        results["collected"] = got
        results["local_indices"] = list(sampler)
        results["training"] = model.training

        batches = _batches()[rank::WORLD]
        results["sharpness"] = sharpness(_network(), _cross_entropy, batches, rho=0.1)
        results["hessian"] = hessian_top_eigenvalue(
            _network(), _cross_entropy, batches, iters=50, tol=1e-9
        )
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_cka_over_shards_equals_one_process(rank_results, debiased):
    x, y = _pairs()
    expected = float(linear_cka(x, y, debiased=debiased))
    for results in rank_results:
        assert results[f"cka_{debiased}"] == pytest.approx(expected, rel=1e-10)


def test_collect_gathers_every_rank_and_drops_the_sampler_padding(rank_results):
    local = [r["local_indices"] for r in rank_results]
    assert sum(len(i) for i in local) == 8  # 7 samples padded to 8: one is seen twice
    items = _items()
    model = _classifier()
    expected = collect(model, DataLoader(items, batch_size=3), "cpu")
    for results in rank_results:
        got = results["collected"]
        assert results["training"]
        assert torch.equal(got.indices, torch.arange(7))
        assert torch.equal(got.labels, expected.labels)
        torch.testing.assert_close(got.embeddings, expected.embeddings)
        torch.testing.assert_close(got.logits, expected.logits)


def test_sharpness_and_hessian_reduce_over_ranks(rank_results):
    batches = _batches()
    expected_sharpness = sharpness(_network(), _cross_entropy, batches, rho=0.1)
    expected_eig = hessian_top_eigenvalue(_network(), _cross_entropy, batches, iters=50, tol=1e-9)
    for results in rank_results:
        assert results["sharpness"] == pytest.approx(expected_sharpness, rel=1e-9)
        assert results["hessian"] == pytest.approx(expected_eig, rel=1e-9)
    # and the shards alone would give different values: the reduction matters
    alone = hessian_top_eigenvalue(_network(), _cross_entropy, batches[0::2], iters=50, tol=1e-9)
    assert abs(alone - expected_eig) > 1e-4 * abs(expected_eig)
