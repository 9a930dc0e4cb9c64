"""The baselines' engine-free cores (CKADistance, FeatureDistance, StartingPointDistance,
AttentionMapDistance) on plain tensors, against NumPy, and their adapters' use of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.regularizers.base import StepInputs
from riftune.regularizers.cka import CKADistance, CKAPenalty
from riftune.regularizers.delta import AttentionMapDistance
from riftune.regularizers.feature_distill import FeatureDistance, FeatureDistill
from riftune.regularizers.l2sp import L2SP, StartingPointDistance


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(9, 4))
    return z0 @ rng.normal(size=(4, 4)) + 0.5 * rng.normal(size=(9, 4)), z0


def np_linear_cka(z, z0):
    zc, z0c = z - z.mean(0), z0 - z0.mean(0)
    cross = np.linalg.norm(zc.T @ z0c) ** 2
    return cross / (np.linalg.norm(zc.T @ zc) * np.linalg.norm(z0c.T @ z0c))


def test_cka_distance_is_one_minus_numpy_cka_and_z0_gets_no_gradient(pair):
    z, z0 = pair
    zt, z0t = torch.tensor(z, requires_grad=True), torch.tensor(z0, requires_grad=True)
    value = CKADistance()(zt, z0t)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(1 - np_linear_cka(z, z0), rel=1e-6)
    value.backward()
    assert zt.grad is not None and z0t.grad is None
    assert CKADistance()(z0t, z0t).item() == pytest.approx(0, abs=1e-6)


def test_feature_distance_is_the_mean_squared_distance(pair):
    z, z0 = pair
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    value = FeatureDistance()(zt, torch.tensor(z0, dtype=torch.float32))
    assert value.item() == pytest.approx(np.mean(np.sum((z - z0) ** 2, 1)), rel=1e-6)
    value.backward()
    np.testing.assert_allclose(zt.grad.numpy(), 2 * (z - z0) / len(z), rtol=1e-5)


@pytest.mark.parametrize(
    ("adapter", "core"),
    [(CKAPenalty("cache"), CKADistance()), (FeatureDistill(), FeatureDistance())],
)
def test_reference_adapters_return_their_core(pair, adapter, core):
    z, z0 = (torch.tensor(x, dtype=torch.float32) for x in pair)
    step = StepInputs(embeddings=z, reference=z0)
    assert torch.equal(adapter.penalty(step), core(z, z0))


def test_starting_point_distance_against_numpy():
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(3, 2)), rng.normal(size=5)]
    anchors = [w + rng.normal(size=w.shape) for w in weights]
    new = [rng.normal(size=(2, 2))]
    expected = sum(np.sum((w - a) ** 2) for w, a in zip(weights, anchors, strict=True))
    expected += 0.3 * np.sum(new[0] ** 2)
    tensors = [torch.tensor(x, requires_grad=True) for x in weights + new]
    distance = StartingPointDistance(0.3)
    value = distance(tensors[:2], [torch.tensor(a) for a in anchors], tensors[2:])
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    np.testing.assert_allclose(tensors[0].grad.numpy(), 2 * (weights[0] - anchors[0]), rtol=1e-5)
    np.testing.assert_allclose(tensors[2].grad.numpy(), 0.6 * new[0], rtol=1e-5)
    assert distance([], [], []).item() == 0
    with pytest.raises(ValueError, match="2 weights for 1 starting points"):
        distance(tensors[:2], [torch.tensor(anchors[0])], [])
    with pytest.raises(ValueError, match="beta-ratio must be >= 0"):
        L2SP(beta_ratio=-1)


def test_attention_map_distance_against_numpy():
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 5, 7))]  # a conv map, tokens
    reference = [rng.normal(size=m.shape) for m in maps]
    weights = [rng.random(2), rng.random(5)]
    expected = 0.0
    for fm, fm0, w in zip(maps, reference, weights, strict=True):
        per_channel = ((fm - fm0) ** 2).reshape(*fm.shape[:2], -1).mean(2)  # (n, C): ‖·‖²/S
        expected += (per_channel * w).sum(1).mean()
    value = AttentionMapDistance()(
        [torch.tensor(m) for m in maps],
        [torch.tensor(m) for m in reference],
        [torch.tensor(w) for w in weights],
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="layer stage2: maps"):
        AttentionMapDistance()(
            [torch.tensor(maps[0])], [torch.tensor(reference[0])], [torch.ones(3)], ["stage2"]
        )
