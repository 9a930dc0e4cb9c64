"""Expected calibration error: a hand-computed case, a calibrated and an overconfident predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.metrics import expected_calibration_error


def test_hand_computed_example():
    # Bins of width 0.2. (0.8, 1]: conf .9 right, .85 wrong -> |0.5 - 0.875| · 2/5 = 0.15
    # (0.6, 0.8]: conf .7 right, .65 wrong -> |0.5 - 0.675| · 2/5 = 0.07
    # (0.4, 0.6]: conf .55 right -> |1 - 0.55| · 1/5 = 0.09
    probs = torch.tensor([[0.9, 0.1], [0.15, 0.85], [0.3, 0.7], [0.65, 0.35], [0.55, 0.45]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.31, abs=1e-6)
    logits = probs.log() + 3.0  # same softmax, not probabilities: detected as logits
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.31, abs=1e-6)
    assert expected_calibration_error(logits, labels, n_bins=5, from_logits=True) == pytest.approx(
        0.31, abs=1e-6
    )


def test_bins_are_closed_on_the_right():
    # Two bins, [0, 0.5] and (0.5, 1]. Confidence 0.5 (arg-max class 0, wrong) lies in the first:
    # 0.25 + 0.05 (0.9, right, alone in the second) = 0.3. In the second bin it would give
    # |0.5 - 0.7| = 0.2.
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.3)


def test_one_bin_is_the_gap_between_accuracy_and_mean_confidence():
    logits = torch.randn(100, 4)
    labels = torch.randint(0, 4, (100,))
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    expected = abs((pred == labels).double().mean() - conf.double().mean())
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(
        float(expected), rel=1e-6
    )


def _dirichlet_predictor(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.5), size=n)
    labels = (rng.random(n)[:, None] > probs.cumsum(1)).sum(1)  # y ~ Categorical(probs)
    return probs, np.minimum(labels, k - 1)


def test_a_perfectly_calibrated_predictor_has_ece_near_zero():
    probs, labels = _dirichlet_predictor(200_000, 3, 0)
    assert expected_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels)) < 0.005


def test_an_overconfident_predictor_has_a_large_ece():
    probs, labels = _dirichlet_predictor(50_000, 3, 1)
    sharpened = torch.from_numpy(np.log(probs) * 3.0)  # logits of a sharper distribution
    assert expected_calibration_error(sharpened, torch.from_numpy(labels)) > 0.05


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(torch.rand(5), torch.zeros(5))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.rand(5, 2), torch.zeros(5), n_bins=0)
