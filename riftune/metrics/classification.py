"""Accuracy and MedMNIST's AUC from logits, single-label (softmax) and multi-label (sigmoid).

Inputs are the whole split (under ``torch.distributed``, gather it first, e.g. with
:func:`riftune.metrics.collect`); nothing here communicates across ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check(
    logits: torch.Tensor, labels: torch.Tensor, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"{who} expects logits of shape (n, k) with k ≥ 2 classes; got {tuple(logits.shape)}"
        )
    if logits.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(
            f"{who} needs one label per row of logits and at least one row; got "
            f"{logits.shape[0]} rows and {labels.shape[0]} labels"
        )
    labels = labels.long().to(logits.device)
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"{who}: labels must lie in [0, {logits.shape[1]}), one per class column")
    return logits, labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit is the label: (1/n) Σᵢ [argmax_c zᵢc = yᵢ].

    Shape:
        logits: (n, k). labels: (n,) integers in [0, k).
    """
    logits, labels = _check(logits, labels, "accuracy")
    return float((logits.argmax(1) == labels).double().mean())


def auc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve as MedMNIST's ``getAUC`` computes it.

    With p = softmax(logits): for two classes, the ROC AUC of p[:, 1] against ``labels == 1``;
    for k > 2 classes, the mean over classes c of the one-vs-rest ROC AUC of p[:, c] against
    ``labels == c`` (Yang et al., "MedMNIST v2", Scientific Data 2023), each ROC AUC the
    Mann-Whitney statistic of :func:`roc_auc` (``sklearn.metrics.roc_auc_score``'s value to
    float64 rounding; sklearn is not imported, since that takes seconds).

    Shape:
        logits: (n, k). labels: (n,) integers in [0, k).

    Returns:
        The AUC in [0, 1], or NaN when it is undefined: when the split lacks a positive or a
        negative example of some class (e.g. a single-class split). NaN rather than an error,
        so that evaluating a tiny split never aborts a run; check with ``math.isnan``.
    """
    logits, labels = _check(logits, labels, "auc")
    probs = torch.softmax(logits.detach().double(), dim=1).cpu().numpy()
    y = labels.cpu().numpy()
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    scores = []
    for c in classes:
        positive = y == c
        if positive.all() or not positive.any():
            return math.nan
        scores.append(roc_auc(probs[:, c], positive))
    return float(np.mean(scores))


def _check_multilabel(
    logits: torch.Tensor, targets: torch.Tensor, who: str
) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    if logits.ndim != 2 or targets.shape != logits.shape or logits.shape[0] == 0:
        raise ValueError(
            f"{who} expects logits and 0/1 targets of one shape (n, L), n ≥ 1; got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    y = targets.detach().cpu().numpy()
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{who}: multi-label targets must be 0 or 1")
    return torch.sigmoid(logits.detach().double()).cpu().numpy(), y.astype(bool)


def multilabel_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over labels of the accuracy of σ(z) > 0.5, as MedMNIST's ``getACC`` for ChestMNIST.

    (1/L) Σₗ (1/n) Σᵢ [[σ(zᵢₗ) > 0.5] = yᵢₗ], i.e. the fraction of the n·L (image, label)
    decisions that are right; σ(z) > 0.5 is z > 0.

    Shape:
        logits: (n, L). targets: (n, L) 0/1.
    """
    probs, y = _check_multilabel(logits, targets, "multilabel_accuracy")
    return float(((probs > 0.5) == y).mean(0).mean())


def multilabel_auc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over labels of the ROC AUC of σ(zₗ) against label l, as MedMNIST's ``getAUC``.

    Labels whose targets are all 0 or all 1 on the split (their AUC is undefined; common for
    rare findings on a small split) are left out of the mean.

    Shape:
        logits: (n, L). targets: (n, L) 0/1.

    Returns:
        The mean AUC in [0, 1], or NaN when no label has both a positive and a negative.
    """
    probs, y = _check_multilabel(logits, targets, "multilabel_auc")
    defined = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    if not defined:
        return math.nan
    return float(np.mean([roc_auc(probs[:, j], y[:, j]) for j in defined]))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the ``positive`` samples: the probability that a positive
    scores above a negative, ties counting one half (NaN without both).

    Shape:
        scores: (n,). positive: (n,) booleans.
    """
    n = len(scores)
    return float(weighted_roc_auc(scores, np.asarray(positive, bool), np.ones((1, n)))[0])


def weighted_roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`roc_auc` under each row of sample ``weights`` (e.g. bootstrap counts): the
    weighted Mann-Whitney statistic Σ w⁺w⁻([s⁺ > s⁻] + ½[s⁺ = s⁻]) / (Σw⁺ · Σw⁻), what
    ``sklearn.metrics.roc_auc_score(..., sample_weight=w)`` computes (to float64 rounding).

    Shape:
        scores: (n,). positive: (n,) booleans. weights: (B, n) non-negative. output: (B,),
        NaN where the positive or the negative weight is zero.

    Raises:
        ValueError: a score is NaN or infinite (a diverged model; sklearn refuses it too).
    """
    if not np.isfinite(scores).all():
        raise ValueError("ROC AUC of non-finite scores (NaN or inf); the model's outputs diverged")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)  # (B, groups of tied scores)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    wins = (pos * (below + 0.5 * neg)).sum(1)
    total = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def task_metrics(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> dict[str, float]:
    """``{"acc": ..., "auc": ...}`` of a split: :func:`accuracy` and :func:`auc`, or, for a
    multi-label task, :func:`multilabel_accuracy` and :func:`multilabel_auc`.

    Shape:
        logits: (n, k). labels: (n,) class indices, or (n, k) 0/1 targets if ``multilabel``.
    """
    if multilabel:
        return {"acc": multilabel_accuracy(logits, labels), "auc": multilabel_auc(logits, labels)}
    return {"acc": accuracy(logits, labels), "auc": auc(logits, labels)}
