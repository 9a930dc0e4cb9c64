"""Multi-label accuracy and AUC against scikit-learn's own per-label computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from riftune.metrics import multilabel_accuracy, multilabel_auc, task_metrics


def _case(seed: int, n: int = 200, labels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, labels)) < 0.3).astype(np.int64)
    return rng.normal(size=(n, labels)) + 1.5 * targets - 0.5, targets


def test_auc_is_sklearns_macro_average_of_sigmoid_scores():
    logits, targets = _case(0)
    expected = roc_auc_score(targets, 1 / (1 + np.exp(-logits)), average="macro")
    got = multilabel_auc(torch.from_numpy(logits), torch.from_numpy(targets))
    assert got == pytest.approx(expected, abs=1e-12)


def test_auc_leaves_out_labels_without_both_kinds():
    logits, targets = _case(1)
    targets[:, 2] = 0
    expected = np.mean([roc_auc_score(targets[:, j], logits[:, j]) for j in (0, 1, 3)])
    assert multilabel_auc(torch.from_numpy(logits), torch.from_numpy(targets)) == pytest.approx(
        expected, abs=1e-12
    )
    assert math.isnan(multilabel_auc(torch.zeros(3, 2), torch.ones(3, 2)))


def test_accuracy_is_the_mean_of_per_label_accuracies_at_probability_one_half():
    logits, targets = _case(2)
    expected = np.mean([accuracy_score(targets[:, j], logits[:, j] > 0) for j in range(4)])
    got = multilabel_accuracy(torch.from_numpy(logits), torch.from_numpy(targets))
    assert got == pytest.approx(expected, abs=1e-12)


def test_non_binary_targets_and_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="0 or 1"):
        multilabel_auc(torch.zeros(4, 2), torch.full((4, 2), 2))
    with pytest.raises(ValueError, match="one shape"):
        multilabel_accuracy(torch.zeros(4, 2), torch.zeros(4, 3))


def test_task_metrics_picks_the_functions_of_the_task():
    logits, targets = _case(3)
    got = task_metrics(torch.from_numpy(logits), torch.from_numpy(targets), multilabel=True)
    probs = 1 / (1 + np.exp(-logits))
    assert got["auc"] == pytest.approx(roc_auc_score(targets, probs, average="macro"), abs=1e-12)
    assert got["acc"] == pytest.approx(((probs > 0.5) == targets).mean(), abs=1e-12)
    labels = torch.tensor([0, 1, 1, 0, 1])
    single = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0], [0.0, 3.0]])
    got = task_metrics(single, labels, multilabel=False)
    assert got["acc"] == pytest.approx(4 / 5)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, single.softmax(1)[:, 1]))
