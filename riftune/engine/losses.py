"""The task loss (single-label cross-entropy or multi-label binary cross-entropy) and its weights.

Class weights counter imbalance: ``balanced`` weighs class c by w_c = N / (C · n_c)
(scikit-learn's ``compute_class_weight("balanced")``), so every class contributes as if the
classes were equally frequent. For multi-label targets the weight of label l's positives is
n_neg,l / n_pos,l (``pos_weight`` of ``BCEWithLogitsLoss``): positives and negatives of each
label then weigh the same in total.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from riftune.errors import UserError

CLASS_WEIGHTS = ("none", "balanced")
ClassWeighting = Literal["none", "balanced"]


def task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    multilabel: bool,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean task loss of a batch.

    Single-label: cross-entropy, −Σᵢ w_{yᵢ} log softmax(zᵢ)_{yᵢ} / Σᵢ w_{yᵢ} (w = 1 without
    weights: the plain mean). Multi-label: binary cross-entropy with logits per label, averaged
    over all n·L entries, −(1/nL) Σᵢₗ [w_l yᵢₗ log σ(zᵢₗ) + (1 − yᵢₗ) log(1 − σ(zᵢₗ))], where
    w_l weighs label l's positives (1 without weights).

    Args:
        logits: model outputs.
        labels: class indices (single-label) or 0/1 targets (multi-label).
        multilabel: which of the two losses.
        class_weights: per-class weights w_c (single-label) or per-label positive weights w_l
            (multi-label), e.g. from :func:`balanced_class_weights`; ``None``: unweighted.

    Shape:
        logits: (n, k). labels: (n,) int64 single-label, (n, k) 0/1 multi-label.
        class_weights: (k,). output: () scalar.
    """
    weights = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    if multilabel:
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi-label targets must match the logits' shape {tuple(logits.shape)}; "
                f"got {tuple(labels.shape)}"
            )
        return F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.dtype), pos_weight=weights
        )
    return F.cross_entropy(logits, labels, weight=weights)


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Weights that make every class (or every label's positives) weigh as much in total.

    Single-label, w_c = N / (C · n_c) (scikit-learn's ``"balanced"``); multi-label,
    w_l = n_neg,l / n_pos,l, the positive weight of label l.

    Args:
        labels: the training split's class indices (N,) or 0/1 multi-label targets (N, L).
        num_classes: C (single-label) or L (multi-label).

    Shape:
        output: (C,) or (L,) float32.

    Raises:
        UserError: a class or label with no training example (its weight would be infinite),
            or, multi-label, a label positive in every image.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim == 2:
        positives = labels.to(torch.float64).sum(0)
        negatives = len(labels) - positives
        bad = ((positives == 0) | (negatives == 0)).nonzero().flatten().tolist()
        if bad:
            raise UserError(
                f"--class-weights balanced needs positive and negative training images of every "
                f"label; labels {bad} have only one kind; use --class-weights none"
            )
        return (negatives / positives).float()
    counts = torch.bincount(labels.long(), minlength=num_classes).to(torch.float64)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise UserError(
            f"--class-weights balanced needs training images of every class; classes {empty} "
            "have none; use --class-weights none"
        )
    return (len(labels) / (num_classes * counts)).float()


def class_weights(
    weighting: ClassWeighting, labels: torch.Tensor, num_classes: int
) -> torch.Tensor | None:
    """The weights :func:`task_loss` takes for ``--class-weights`` ``none`` or ``balanced``.

    Raises:
        UserError: an unknown weighting, or one :func:`balanced_class_weights` refuses.
    """
    if weighting == "none":
        return None
    if weighting == "balanced":
        return balanced_class_weights(labels, num_classes)
    raise UserError(
        f"unknown class weighting {weighting!r}; choose one of {', '.join(CLASS_WEIGHTS)}"
    )
