"""task_loss against hand-written cross-entropies; balanced weights against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from riftune.engine.losses import balanced_class_weights, class_weights, task_loss
from riftune.errors import UserError


def test_single_label_loss_is_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1, 2])
    weights = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    log_p = logits.log_softmax(1)[torch.arange(10), labels]
    expected_plain = -log_p.mean()
    expected_weighted = -(weights[labels] * log_p).sum() / weights[labels].sum()
    assert task_loss(logits, labels, multilabel=False).item() == pytest.approx(
        expected_plain.item(), abs=1e-12
    )
    assert task_loss(logits, labels, False, weights).item() == pytest.approx(
        expected_weighted.item(), abs=1e-12
    )


def test_multilabel_loss_is_the_mean_per_label_binary_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    targets = (torch.rand(6, 4, generator=generator) < 0.4).long()
    pos_weight = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    p, y = torch.sigmoid(logits), targets.double()
    for weight in (torch.ones(4, dtype=torch.float64), pos_weight):
        expected = -(weight * y * p.log() + (1 - y) * (1 - p).log()).mean()
        got = task_loss(logits, targets, True, None if weight.eq(1).all() else weight)
        assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        task_loss(logits, targets[:, 0], multilabel=True)


def test_balanced_weights_equal_sklearns():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    got = balanced_class_weights(torch.from_numpy(labels), 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert class_weights("none", torch.from_numpy(labels), 3) is None
    np.testing.assert_allclose(class_weights("balanced", torch.from_numpy(labels), 3), got)


def test_balanced_multilabel_weights_are_negatives_over_positives():
    targets = torch.tensor([[1, 0], [0, 0], [0, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(balanced_class_weights(targets, 2).numpy(), [3 / 2, 3 / 2])
    with pytest.raises(UserError, match=r"labels \[1\]"):
        balanced_class_weights(torch.tensor([[1, 0], [0, 0]]), 2)


def test_a_class_missing_from_training_is_refused():
    with pytest.raises(UserError, match=r"classes \[1\]"):
        balanced_class_weights(torch.tensor([0, 0, 2]), 3)
    with pytest.raises(UserError, match="unknown class weighting"):
        class_weights("inverse", torch.tensor([0, 1]), 2)
