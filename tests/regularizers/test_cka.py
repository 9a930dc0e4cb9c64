"""CKA (riftune/regularizers/cka.py): its core and penalty against NumPy, the reference
adapters, and the --reference flag.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune.errors import UserError
from riftune.regularizers.base import StepInputs
from riftune.regularizers.cka import CKADistance, CKAPenalty
from riftune.regularizers.feature_distill import FeatureDistance, FeatureDistill

from .conftest import np_linear_cka


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_cka_penalty_is_one_minus_numpy_cka(n, d, seed):
    gen = np.random.default_rng(seed)
    z, z0 = gen.normal(size=(n, d)), gen.normal(size=(n, d)) + gen.normal(size=(1, d))
    got = CKAPenalty().penalty(
        StepInputs(torch.tensor(z, dtype=torch.float32), torch.tensor(z0, dtype=torch.float32))
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(1 - np_linear_cka(z, z0), abs=1e-5)


def test_cka_penalty_gradient_and_invariances():
    z0 = torch.randn(16, 8)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = (3.0 * z0 @ q + 1.0).requires_grad_(True)  # same representation up to Q, scale
    reg = CKAPenalty()
    value = reg.penalty(StepInputs(rotated, z0))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(16, 8, requires_grad=True)
    reg.penalty(StepInputs(z, z0)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"StepInputs\.reference"):
        reg.penalty(StepInputs(z))
    with pytest.raises(ValueError, match="pairs each sample"):
        reg.penalty(StepInputs(z, z0[:-1]))


def test_reference_flag_is_shared_and_parsed():
    from riftune.config import finetune_parser, run_config_from_args

    parser = finetune_parser()

    def build(*flags: str):
        config = run_config_from_args(parser.parse_args(list(flags)))
        return config.regularizer.build(8)

    # --reference is one flag that reaches whichever of cka and feature-distill is chosen
    assert build("--reg", "cka", "--reference", "cache").reference == "cache"
    assert build("--reg", "feature-distill", "--reference", "cache").reference == "cache"
    assert build("--reg", "cka").reference == "teacher"
    assert build("--reg", "l2sp", "--l2sp-beta-ratio", "0.5").distance.beta_ratio == 0.5
    assert build("--reg", "delta").feature_layers == []
    layered = build("--reg", "delta", "--delta-layers", "blocks.1, blocks.3")
    assert layered.feature_layers == ["blocks.1", "blocks.3"]
    with pytest.raises(UserError, match="--reference"):
        parser.parse_args(["--reference", "other"])


def test_cka_distance_is_one_minus_numpy_cka_and_z0_gets_no_gradient(pair):
    z, z0 = pair
    zt, z0t = torch.tensor(z, requires_grad=True), torch.tensor(z0, requires_grad=True)
    value = CKADistance()(zt, z0t)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(1 - np_linear_cka(z, z0), rel=1e-6)
    value.backward()
    assert zt.grad is not None and z0t.grad is None
    assert CKADistance()(z0t, z0t).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize(
    ("adapter", "core"),
    [(CKAPenalty("cache"), CKADistance()), (FeatureDistill(), FeatureDistance())],
)
def test_reference_adapters_return_their_core(pair, adapter, core):
    z, z0 = (torch.tensor(x, dtype=torch.float32) for x in pair)
    step = StepInputs(embeddings=z, reference=z0)
    assert torch.equal(adapter.penalty(step), core(z, z0))
