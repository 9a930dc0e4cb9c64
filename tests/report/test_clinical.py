"""ROC, reliability and confusion numbers against scikit-learn; the figures are written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from riftune.metrics import expected_calibration_error
from riftune.report.clinical import (
    ECE_BINS,
    confusion_counts,
    reliability_bins,
    roc_curves,
    write_clinical_figures,
)


def _data(k: int, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = np.round(rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels], 1)  # ties included
    return logits, labels


def _softmax(z: np.ndarray) -> np.ndarray:
    # the same float64 softmax as the module, so tied scores stay bit-identical ties
    return torch.softmax(torch.from_numpy(z).double(), 1).numpy()


@pytest.mark.parametrize("k", [2, 4])
def test_roc_curves_match_sklearn(k):
    logits, labels = _data(k)
    probs = _softmax(logits)
    curves = roc_curves(torch.from_numpy(logits), torch.from_numpy(labels), list("abcd")[:k])
    classes = [1] if k == 2 else range(k)
    assert [c.name for c in curves] == [list("abcd")[c] for c in classes]
    for curve, c in zip(curves, classes, strict=True):
        fpr, tpr, _ = roc_curve(labels == c, probs[:, c], drop_intermediate=False)
        np.testing.assert_allclose(curve.fpr, fpr, atol=1e-12)
        np.testing.assert_allclose(curve.tpr, tpr, atol=1e-12)
        assert curve.auc == pytest.approx(roc_auc_score(labels == c, probs[:, c]), abs=1e-12)


def test_roc_leaves_out_a_class_without_positives():
    logits, labels = _data(3)
    labels[labels == 2] = 0
    assert [c.name for c in roc_curves(logits, labels)] == ["class 0", "class 1"]


def test_reliability_bins_match_sklearn_and_the_ece():
    logits, labels = _data(3, n=500, seed=1)
    probs = _softmax(logits)
    bins = reliability_bins(logits, labels)
    assert len(bins.counts) == ECE_BINS and bins.counts.sum() == 500
    correct = probs.argmax(1) == labels
    accuracy, confidence = calibration_curve(correct, probs.max(1), n_bins=ECE_BINS)
    filled = bins.counts > 0
    np.testing.assert_allclose(bins.accuracy[filled], accuracy, atol=1e-12)
    np.testing.assert_allclose(bins.confidence[filled], confidence, atol=1e-12)
    assert np.isnan(bins.accuracy[~filled]).all()
    expected = expected_calibration_error(torch.from_numpy(logits), torch.from_numpy(labels))
    assert bins.ece == pytest.approx(expected, abs=1e-12)


def test_confusion_counts_match_sklearn():
    logits, labels = _data(4)
    expected = confusion_matrix(labels, logits.argmax(1), labels=range(4))
    np.testing.assert_array_equal(confusion_counts(logits, labels), expected)


def test_figures_are_written(tmp_path):
    logits, labels = _data(3)
    written = write_clinical_figures(tmp_path, logits, labels, ["normal", "benign", "malignant"])
    assert set(written) == {"roc", "calibration", "confusion"}
    for name, path in written.items():
        assert path == tmp_path / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    single = tmp_path / "single"
    single.mkdir()
    only_zeros = write_clinical_figures(single, logits, np.zeros_like(labels))
    assert set(only_zeros) == {"calibration", "confusion"} and not (single / "roc.png").exists()
