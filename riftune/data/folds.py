"""Cross-validation folds over train + val, for tuning without ever reading the test split.

A fold run pools the training split (after ``--shots``) with the validation split and cuts the
pool into K folds with scikit-learn: stratified by class (``StratifiedKFold``), and with a
group per item (``--group-column``) whole groups at a time (``StratifiedGroupKFold``); for
multi-label targets plain ``KFold`` / ``GroupKFold``. Fold I validates, the other K - 1 train.
The folds depend only on the pooled labels, the groups, K and the fold seed, so every
candidate of a study sees the same folds and their scores can be compared pair by pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from riftune.data.stored import StoredImages
from riftune.errors import UserError

POOLED = ("train", "val")


@dataclass(frozen=True)
class CrossValidation:
    """Fold ``fold`` of ``folds`` over train + val, the folds drawn with ``seed``."""

    folds: int
    fold: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise UserError(f"--cv-folds must be at least 2; got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise UserError(
                f"--cv-fold {self.fold} is not one of the {self.folds} folds 0..{self.folds - 1}"
            )


def fold_positions(
    labels: np.ndarray, cv: CrossValidation, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the pool that train and that validate in fold ``cv.fold``.

    Args:
        labels: class index of each pooled item (N,), or multi-label 0/1 targets (N, L).
        cv: the number of folds, the fold and the seed of the shuffle.
        groups: the group of each item (a patient), or ``None``. Shape: (N,).

    Returns:
        Sorted (train, val) positions; together a partition of ``0..N-1``.

    Raises:
        UserError: a class with fewer than K items, or in fewer than K groups (some fold
            would not validate on it), or fewer than K groups.
    """
    multilabel = labels.ndim == 2
    if not multilabel:
        units = np.arange(len(labels)) if groups is None else np.asarray(groups)
        what = "images" if groups is None else "groups"
        classes = np.unique(labels)
        counts = np.array([len(np.unique(units[labels == c])) for c in classes])
        if counts.min() < cv.folds:
            raise UserError(
                f"--cv-folds {cv.folds}: class {classes[counts.argmin()]} has only "
                f"{counts.min()} {what} in train + val, so some fold would not validate on it; "
                f"lower --cv-folds to at most {counts.min()}"
            )
    if groups is not None and len(np.unique(groups)) < cv.folds:
        raise UserError(
            f"--cv-folds {cv.folds}: only {len(np.unique(groups))} groups in train + val; "
            "lower --cv-folds"
        )
    if groups is None:
        splitter = (KFold if multilabel else StratifiedKFold)(
            cv.folds, shuffle=True, random_state=cv.seed
        )
    else:
        splitter = (GroupKFold if multilabel else StratifiedGroupKFold)(
            cv.folds, shuffle=True, random_state=cv.seed
        )
    strata = np.zeros(len(labels)) if multilabel else labels
    train, val = list(splitter.split(np.zeros(len(labels)), strata, groups))[cv.fold]
    return np.sort(train), np.sort(val)


def pool_fold(
    cv: CrossValidation,
    images: dict[str, StoredImages],
    labels: dict[str, np.ndarray],
    groups: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, StoredImages], dict[str, np.ndarray]]:
    """Pool the train and val splits and cut out fold ``cv.fold``: it validates, the rest trains.

    Only ``train`` and ``val`` are read; the results have no ``test`` key, so a loader that
    builds the splits it is given never reads the test split.

    Args:
        cv: which fold.
        images: split name → the stored images (:mod:`riftune.data.stored`).
        labels: split name → labels (N_s,) or (N_s, L), aligned with ``images``.
        groups: split name → the group of each image (N_s,), or ``None``.

    Returns:
        ``images`` and ``labels`` as ``{"train": ..., "val": ...}`` of the fold.
    """
    pooled_images = images["train"].join(images["val"])
    pooled_labels = np.concatenate([labels[split] for split in POOLED])
    pooled_groups = None if groups is None else np.concatenate([groups[s] for s in POOLED])
    train, val = fold_positions(pooled_labels, cv, pooled_groups)
    return (
        {"train": pooled_images.subset(train), "val": pooled_images.subset(val)},
        {"train": pooled_labels[train], "val": pooled_labels[val]},
    )
