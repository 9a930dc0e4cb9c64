"""Bootstrap intervals: resampled AUC against scikit-learn, coverage on a known case, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from riftune.metrics import auc
from riftune.metrics.bootstrap import bootstrap_ci, resample_counts, weighted_auc


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_weighted_auc_is_the_auc_of_the_resampled_data(k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 80)
    logits = np.round(rng.normal(size=(80, k)) + np.eye(k)[labels], 1)  # rounding makes ties
    probs = _softmax(logits)
    counts = resample_counts(labels, 5, rng, stratified=True)
    got = weighted_auc(probs, labels, counts)
    for row, value in zip(counts, got, strict=True):
        drawn = np.repeat(np.arange(80), row)
        expected = auc(torch.from_numpy(logits[drawn]), torch.from_numpy(labels[drawn]))
        assert value == pytest.approx(expected, abs=1e-12)
    ones = weighted_auc(probs, labels, np.ones((1, 80)))[0]
    expected = (
        roc_auc_score(labels, probs[:, 1])
        if k == 2
        else roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert ones == pytest.approx(expected, abs=1e-12)


def test_stratified_counts_keep_each_class_count():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 5)
    counts = resample_counts(labels, 50, np.random.default_rng(0), stratified=True)
    for c, n in ((0, 7), (1, 3), (2, 5)):
        assert (counts[:, labels == c].sum(1) == n).all()
    plain = resample_counts(labels, 50, np.random.default_rng(0), stratified=False)
    assert (plain.sum(1) == 15).all()
    assert len(set(plain[:, labels == 1].sum(1).tolist())) > 1  # class counts vary


def test_coverage_on_a_binormal_model():
    """Positives score N(1, 1), negatives N(0, 1): AUC = Φ(1/√2), and with the class-1 logit
    as score and a threshold at 0, accuracy = (Φ(1) + Φ(0)) / 2 for equal class counts. Of 300
    simulated test sets (60 + 60 images) ~95% of the intervals must cover each true value;
    percentile intervals run a little short at this n, and 300 draws have a binomial standard
    deviation of 1.3 points, so 0.89..0.99 is accepted (an interval without resampling, or at
    another level such as 68%, lands far outside)."""
    true_auc, true_acc = norm.cdf(1 / math.sqrt(2)), (norm.cdf(1) + 0.5) / 2
    rng = np.random.default_rng(12345)
    labels = np.r_[np.zeros(60, dtype=np.int64), np.ones(60, dtype=np.int64)]
    covered = {"acc": 0, "auc": 0}
    trials = 300
    for trial in range(trials):
        score = rng.normal(size=120) + labels
        logits = np.stack([np.zeros(120), score], 1)
        ci = bootstrap_ci(logits, labels, resamples=500, seed=trial)
        covered["acc"] += ci["acc"]["low"] <= true_acc <= ci["acc"]["high"]
        covered["auc"] += ci["auc"]["low"] <= true_auc <= ci["auc"]["high"]
    for key, count in covered.items():
        assert 0.89 <= count / trials <= 0.99, (key, count / trials)


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, 100))
    logits = torch.from_numpy(rng.normal(size=(100, 3))) + 2 * torch.eye(3)[labels]
    first = bootstrap_ci(logits, labels, seed=7)
    assert bootstrap_ci(logits, labels, seed=7) == first
    assert bootstrap_ci(logits, labels, seed=8)["auc"] != first["auc"]
    assert first["resamples"] == first["auc_resamples"] == 1000
    assert first["seed"] == 7 and first["method"] == "percentile" and first["stratified"]
    point = auc(logits, labels)
    assert first["auc"]["low"] < point < first["auc"]["high"]


def test_interval_bounds_are_the_quantiles_of_the_resampled_values():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    logits = rng.normal(size=(40, 2)) + np.eye(2)[labels]
    ci = bootstrap_ci(logits, labels, resamples=200, seed=5, level=0.9, stratified=False)
    counts = resample_counts(labels, 200, np.random.default_rng(5), stratified=False)
    accs = counts @ (logits.argmax(1) == labels) / 40
    assert ci["acc"]["low"] == pytest.approx(np.quantile(accs, 0.05))
    assert ci["acc"]["high"] == pytest.approx(np.quantile(accs, 0.95))


def test_degenerate_resamples_are_left_out_of_the_auc():
    labels = np.array([0] * 9 + [1])  # plain resampling misses the one positive ~35% of times
    logits = np.stack([np.zeros(10), np.linspace(-1, 1, 10)], 1)
    ci = bootstrap_ci(logits, labels, resamples=400, seed=0, stratified=False)
    assert 200 < ci["auc_resamples"] < 330  # P(drawn at least once) = 1 − 0.9¹⁰ ≈ 0.65
    assert ci["auc"]["low"] == ci["auc"]["high"] == 1.0  # the positive always ranks on top
    only_one_class = bootstrap_ci(logits, np.zeros(10, dtype=np.int64), resamples=50)
    assert only_one_class["auc_resamples"] == 0
    assert math.isnan(only_one_class["auc"]["low"]) and math.isnan(only_one_class["auc"]["high"])
    assert only_one_class["acc"]["low"] <= only_one_class["acc"]["high"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci(np.zeros((3, 2)), np.zeros(3), resamples=0)
    with pytest.raises(ValueError, match="labels"):
        bootstrap_ci(np.zeros((3, 2)), np.array([0, 1, 2]))
