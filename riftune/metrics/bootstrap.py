"""Seeded bootstrap confidence intervals of accuracy and MedMNIST's AUC.

Each resample draws n images with replacement, as a vector of counts w (how often each
image was drawn); accuracy and AUC of the resample are weighted versions of the metrics on the
original images, so nothing is copied:

- accuracy: Σᵢ wᵢ [ŷᵢ = yᵢ] / Σᵢ wᵢ;
- AUC of scores s against positives P and negatives N:
  Σ_{i∈P} Σ_{j∈N} wᵢ wⱼ ([sᵢ > sⱼ] + ½[sᵢ = sⱼ]) / (Σ_P wᵢ · Σ_N wⱼ), which is exactly the
  ROC AUC of the resampled data; binary tasks score p[:, 1], k > 2 classes average the
  one-vs-rest AUC of p[:, c] over c, as :func:`riftune.metrics.auc` does.

The interval is the percentile interval (Efron & Tibshirani 1993, ch. 13): the
(1 − level)/2 and (1 + level)/2 quantiles of the resampled values (linear interpolation).

Resampling is stratified by default: each class is resampled within itself, keeping the
class counts of the split, so every resample has every class the split has and the AUC is
always defined (the convention of pROC's ``stratified=TRUE``; it treats the class counts as
fixed by design, as they are in a curated test split). ``stratified=False`` draws from the
whole split; a resample that then lacks a class has no AUC and is left out of the AUC's
quantiles (``auc_resamples`` says how many were kept).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from riftune.metrics.classification import weighted_roc_auc

RESAMPLES = 1000
"""Default number of bootstrap resamples."""

_CHUNK_ELEMENTS = 4_000_000  # resamples × images per chunk of count vectors (32 MB of int64)


def bootstrap_ci(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    stratified: bool = True,
) -> dict:
    """Percentile bootstrap intervals of accuracy and AUC (see the module docs).

    Args:
        logits: class scores; a softmax gives the probabilities the AUC ranks.
        labels: true classes in [0, k).
        resamples: B, the number of bootstrap resamples.
        seed: seed of the resampling (``numpy.random.default_rng(seed)``); same inputs and
            seed give the same interval.
        level: coverage of the interval, in (0, 1).
        stratified: resample within each class (default) or from the whole split.

    Shape:
        logits: (n, k), k ≥ 2. labels: (n,).

    Returns:
        ``{"acc": {"low", "high"}, "auc": {"low", "high"}, "resamples": B, "auc_resamples": B',
        "seed", "level", "method": "percentile", "stratified"}``; the AUC bounds are NaN when no
        resample has a defined AUC (e.g. a split with one class only).
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    probs, y = _probabilities(logits, labels)
    correct = (probs.argmax(1) == y).astype(np.float64)
    rng = np.random.default_rng(seed)
    accs, aucs = [], []
    chunk = max(1, _CHUNK_ELEMENTS // len(y))
    for start in range(0, resamples, chunk):
        counts = resample_counts(y, min(chunk, resamples - start), rng, stratified)
        accs.append(counts @ correct / len(y))
        aucs.append(weighted_auc(probs, y, counts))
    acc_values, auc_values = np.concatenate(accs), np.concatenate(aucs)
    auc_values = auc_values[~np.isnan(auc_values)]
    return {
        "acc": _percentile_interval(acc_values, level),
        "auc": _percentile_interval(auc_values, level),
        "resamples": resamples,
        "auc_resamples": len(auc_values),
        "seed": seed,
        "level": level,
        "method": "percentile",
        "stratified": stratified,
    }


def resample_counts(
    labels: np.ndarray, resamples: int, rng: np.random.Generator, stratified: bool = True
) -> np.ndarray:
    """How often each image is drawn in each of ``resamples`` bootstrap resamples.

    Shape:
        labels: (n,). output: (resamples, n) int64; each row sums to n, and with
        ``stratified`` its sum over each class's images is that class's count.
    """
    n = len(labels)
    if not stratified:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    counts = np.zeros((resamples, n), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        counts[:, members] = rng.multinomial(
            len(members), np.full(len(members), 1.0 / len(members)), size=resamples
        )
    return counts


def weighted_auc(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MedMNIST's AUC of each row of ``weights`` (sample weights, e.g. bootstrap counts).

    Equals ``sklearn.metrics.roc_auc_score(..., sample_weight=w)`` per class (tied scores
    count one half), averaged over classes for k > 2, p[:, 1] alone for k = 2.

    Shape:
        probs: (n, k). labels: (n,). weights: (B, n) non-negative. output: (B,), NaN where
        some scored class has zero positive or zero negative weight.
    """
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    weights = np.asarray(weights, dtype=np.float64)
    return np.mean([weighted_roc_auc(probs[:, c], labels == c, weights) for c in classes], 0)


def _probabilities(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    scores = torch.as_tensor(logits).detach().double().cpu()
    y = torch.as_tensor(labels).reshape(-1).long().cpu().numpy()
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] != len(y) or len(y) == 0:
        raise ValueError(
            f"bootstrap_ci expects logits (n, k), k ≥ 2, n ≥ 1, and n labels; got "
            f"{tuple(scores.shape)} and {len(y)} labels"
        )
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"bootstrap_ci: labels must lie in [0, {scores.shape[1]})")
    return torch.softmax(scores, 1).numpy(), y


def _percentile_interval(values: np.ndarray, level: float) -> dict[str, float]:
    if len(values) == 0:
        return {"low": math.nan, "high": math.nan}
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"low": float(low), "high": float(high)}
