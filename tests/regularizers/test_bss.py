"""Batch Spectral Shrinkage against NumPy's SVD: value, gradient, its flag, its refusals, and the
global batch in a real 2-process gloo group."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune import regularizers
from riftune.config import RegularizerConfig
from riftune.errors import UserError
from riftune.options import from_mapping
from riftune.regularizers.base import StepInputs
from riftune.regularizers.bss import BSS, BatchSpectralShrinkage


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(2, 12), k=st.integers(1, 3), seed=st.integers(0, 999))
def test_value_is_the_sum_of_the_k_smallest_squared_singular_values(n, d, k, seed):
    z = np.random.default_rng(seed).normal(size=(n, d))
    k = min(k, n, d)
    singular = np.linalg.svd(z, compute_uv=False)  # descending
    expected = float(np.sum(np.sort(singular)[:k] ** 2))
    value = BSS(k=k).penalty(StepInputs(torch.tensor(z, dtype=torch.float32)))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_gradient_is_two_sigma_u_v_of_the_smallest():
    """∂σ²/∂Z = 2σ·u vᵀ for a simple singular value σ with singular vectors u, v."""
    z = np.random.default_rng(3).normal(size=(6, 9))
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    expected = 2 * s[-1] * np.outer(u[:, -1], vt[-1]) + 2 * s[-2] * np.outer(u[:, -2], vt[-2])
    leaf = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    BatchSpectralShrinkage(k=2)(leaf).backward()
    np.testing.assert_allclose(leaf.grad.numpy(), expected, atol=1e-4)


def test_a_hand_worked_case():
    # rows (3, 0) and (0, 1): singular values 3 and 1; k = 1 shrinks the 1, k = 2 both
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert BatchSpectralShrinkage(1)(z).item() == pytest.approx(1.0)
    assert BatchSpectralShrinkage(2)(z).item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="has 2"):
        BatchSpectralShrinkage(3)(z)
    with pytest.raises(ValueError, match="k must be >= 1"):
        BatchSpectralShrinkage(0)


def test_flag_defaults_and_refusals():
    assert regularizers.get("bss") is BSS
    assert BSS.default_lam == 1e-3 and BSS.reference is None and BSS.min_batch_size == 2
    assert not BSS.splits_over_micro_batches and BSS.penalizes_features_only
    config = RegularizerConfig("bss", None, from_mapping(BSS.Options, {"k": 2}, "bss"))
    assert config.build(8).shrinkage.k == 2
    with pytest.raises(UserError, match="--bss-k 0: must be > 0"):
        BSS.Options(k=0)
    with pytest.raises(UserError, match=r"--bss-k 3 needs .* 2 singular values"):
        BSS(k=3).penalty(StepInputs(torch.ones(2, 5)))


# ------------------------------------------------------------------------ distributed
def _ddp_setup():
    torch.manual_seed(0)
    return torch.randn(8, 6), torch.nn.Linear(6, 5)


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x, linear = _ddp_setup()
        ddp = torch.nn.parallel.DistributedDataParallel(linear)  # kept alive through backward
        value = BSS(k=2).penalty(StepInputs(ddp(x[4 * rank : 4 * rank + 4])))
        value.backward()
        torch.save({"value": value.item(), "grad": linear.weight.grad}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch and riftune
def test_two_processes_shrink_the_global_batch_as_one_does(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    x, linear = _ddp_setup()
    single = BSS(k=2).penalty(StepInputs(linear(x)))
    single.backward()
    for rank in (0, 1):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["value"] == pytest.approx(single.item(), rel=1e-5)
        torch.testing.assert_close(result["grad"], linear.weight.grad, rtol=1e-4, atol=1e-6)
