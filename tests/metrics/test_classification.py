"""accuracy and MedMNIST's AUC against NumPy and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from riftune.metrics import accuracy, auc


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _noisy_logits(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(labels), k)) + 1.2 * np.eye(k)[labels]


def test_accuracy_matches_numpy():
    labels = np.random.default_rng(0).integers(0, 4, 300)
    logits = _noisy_logits(labels, 4, 1)
    expected = np.mean(logits.argmax(1) == labels)
    assert accuracy(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(expected)
    assert accuracy(
        torch.from_numpy(logits).float(), torch.from_numpy(labels)[:, None]
    ) == pytest.approx(expected)


def test_binary_auc_is_roc_auc_of_the_class_one_probability():
    labels = np.random.default_rng(2).integers(0, 2, 200)
    logits = _noisy_logits(labels, 2, 3)
    expected = roc_auc_score(labels, _softmax(logits)[:, 1])
    assert auc(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(
        expected, abs=1e-12
    )
    assert 0.6 < expected < 1.0


@pytest.mark.parametrize("k", [3, 7])
def test_multiclass_auc_is_the_mean_one_vs_rest_auc(k):
    labels = np.random.default_rng(k).integers(0, k, 500)
    logits = _noisy_logits(labels, k, k + 1)
    probs = _softmax(logits)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    per_class = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(k)])
    got = auc(torch.from_numpy(logits).float(), torch.from_numpy(labels))
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(per_class, abs=1e-6)


def test_auc_is_nan_when_undefined():
    assert math.isnan(auc(torch.randn(10, 2), torch.ones(10, dtype=torch.long)))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 has no positive example
    assert math.isnan(auc(torch.randn(6, 3), labels))


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.randn(5), torch.zeros(5, dtype=torch.long), "shape"),
        (torch.randn(5, 1), torch.zeros(5, dtype=torch.long), "k ≥ 2"),
        (torch.randn(5, 2), torch.zeros(4, dtype=torch.long), "one label per row"),
        (torch.randn(5, 2), torch.full((5,), 2), r"\[0, 2\)"),
    ],
)
def test_bad_input_raises(logits, labels, match):
    for metric in (accuracy, auc):
        with pytest.raises(ValueError, match=match):
            metric(logits, labels)
