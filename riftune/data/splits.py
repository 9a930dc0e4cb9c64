"""Checks and helpers shared by every data source: split names, label checks, held-out splits."""

from __future__ import annotations

import numpy as np

from riftune.errors import UserError

SPLITS = ("train", "val", "test")


def check_labels(labels: dict[str, np.ndarray], num_classes: int | None, source: str) -> int:
    """Check that every split's labels are valid class indices and return the class count.

    With ``num_classes`` known (MedMNIST flags, class folders, class names) every label must
    lie in ``[0, num_classes)``. Otherwise the count is inferred as ``max label + 1`` and every
    class in that range must occur in the training split (a class never trained on cannot be
    learned, and a gap in the indices is usually a labelling mistake).

    Args:
        labels: split name → integer labels, shape (N,), non-negative (checked earlier).
        num_classes: the known class count, or ``None`` to infer it.
        source: the dataset's name or path, for messages.

    Raises:
        UserError: a label out of range, fewer than two classes, or a class missing in train.
    """
    inferred = 1 + max(int(split_labels.max()) for split_labels in labels.values())
    if num_classes is not None:
        for split, split_labels in labels.items():
            if int(split_labels.max()) >= num_classes:
                raise UserError(
                    f"{source}: {split} labels go up to {int(split_labels.max())} but there are "
                    f"only {num_classes} classes (0..{num_classes - 1}); fix the labels"
                )
        return num_classes
    if inferred < 2:
        raise UserError(f"{source}: all labels are 0; a classifier needs at least two classes")
    present = np.unique(labels["train"])
    if len(present) < inferred:  # some class in 0..K-1 is missing; name the first few
        missing = np.setdiff1d(np.arange(min(inferred, len(present) + 10)), present).tolist()
        count = inferred - len(present)
        listed = f"{missing}" if count == len(missing) else f"{missing[:10]} and more ({count})"
        raise UserError(
            f"{source}: classes {listed} occur in no training image (labels must be 0..K-1, "
            "each present in train); fix the labels"
        )
    return inferred


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out), holding out ``fraction`` of each class.

    Each class with at least two items holds out ``max(1, round(fraction * n_c))`` of them,
    never all; a class with one item keeps it. The draw is seeded, so it is reproducible.

    Args:
        labels: class index of each item. Shape: (N,).
        fraction: the share to hold out, in (0, 1).
        seed: seed of the draw.

    Returns:
        Sorted positions kept and held out; together a partition of ``0..N-1``.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(rng.choice(members, size=count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out
