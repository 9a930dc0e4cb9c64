"""Feature distillation (riftune/regularizers/feature_distill.py): its core and penalty, exact
value and gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.regularizers.base import StepInputs
from riftune.regularizers.feature_distill import FeatureDistance, FeatureDistill


def test_feature_distill_exact_value_and_gradient():
    gen = np.random.default_rng(1)
    z, z0 = gen.normal(size=(7, 5)), gen.normal(size=(7, 5))
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    z0t = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    value = FeatureDistill("cache").penalty(StepInputs(zt, z0t))
    assert value.item() == pytest.approx(((z - z0) ** 2).sum(1).mean(), rel=1e-6)
    value.backward()
    np.testing.assert_allclose(zt.grad.numpy(), 2 * (z - z0) / 7, rtol=1e-5)
    assert z0t.grad is None  # the reference is a constant


def test_feature_distance_is_the_mean_squared_distance(pair):
    z, z0 = pair
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    value = FeatureDistance()(zt, torch.tensor(z0, dtype=torch.float32))
    assert value.item() == pytest.approx(np.mean(np.sum((z - z0) ** 2, 1)), rel=1e-6)
    value.backward()
    np.testing.assert_allclose(zt.grad.numpy(), 2 * (z - z0) / len(z), rtol=1e-5)
