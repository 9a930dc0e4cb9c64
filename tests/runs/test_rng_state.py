"""RNG state (riftune/runs/rng_state.py): identical draws after a checkpoint, on CPU and CUDA."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from riftune.runs.rng_state import capture_rng_state, restore_rng_state

from .conftest import assert_same, round_trip


def _draws(generator):
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5).tolist()  # noqa: NPY002 (tests the global RNG)
        + np.random.randint(0, 1000, 3).tolist(),  # noqa: NPY002
        torch.randn(5).tolist(),
        torch.rand(4, generator=generator).tolist(),
    )


def test_rng_state_restores_identical_draws_after_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    sampler = torch.Generator().manual_seed(4)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.standard_normal(1)  # noqa: NPY002 (leaves a cached Gaussian in NumPy's)
    state = capture_rng_state({"sampler": sampler})
    expected = _draws(sampler)
    assert _draws(sampler) != expected  # the generators really moved on
    restored = round_trip({"rng": state}, tmp_path)["rng"]
    assert_same(state, restored)
    restore_rng_state(restored, {"sampler": sampler})
    assert _draws(sampler) == expected
    with pytest.raises(ValueError, match="'loader'"):
        restore_rng_state(restored, {"loader": torch.Generator()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_and_tensors_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    on_gpu = torch.Generator("cuda").manual_seed(6)
    state = capture_rng_state({"on_gpu": on_gpu})
    assert len(state["cuda"]) == torch.cuda.device_count()

    def draws():
        return torch.randn(4, device="cuda").cpu(), torch.rand(3, device="cuda", generator=on_gpu)

    expected = draws()
    weights = torch.arange(6.0, device="cuda")
    restored = round_trip({"rng": state, "weights": weights}, tmp_path)
    assert restored["weights"].device.type == "cpu"
    assert torch.equal(restored["weights"], weights.cpu())
    restore_rng_state(restored["rng"], {"on_gpu": on_gpu})
    again = draws()
    assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])
