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


def count_outputs(labels: dict[str, np.ndarray], known: int | None, source: str) -> int:
    """The number of logits the labels call for: classes K, or labels L if multi-label.

    Class indices (N,) go through :func:`check_labels`, 0/1 targets (N, L) through
    :func:`check_targets`; ``known`` is the source's class or label count, if it has one.

    Raises:
        UserError: some splits multi-label and others not, or what those checks refuse.
    """
    kinds = {split: split_labels.ndim == 2 for split, split_labels in labels.items()}
    if len(set(kinds.values())) > 1:
        multi = [split for split, is_multi in kinds.items() if is_multi]
        raise UserError(
            f"{source}: {', '.join(multi)} labels are multi-label (N, L) and the others are "
            "one class per image; every split needs the same kind of labels"
        )
    if any(kinds.values()):
        return check_targets(labels, known, source)
    return check_labels(labels, known, source)


def check_targets(labels: dict[str, np.ndarray], num_labels: int | None, source: str) -> int:
    """Check that multi-label targets have one width L in every split and return L.

    Args:
        labels: split name → 0/1 targets, shape (N, L) (values checked earlier).
        num_labels: the known label count (a MedMNIST flag's), or ``None``.
        source: the dataset's name or path, for messages.

    Raises:
        UserError: splits of different widths, or a width other than ``num_labels``.
    """
    widths = {split: int(targets.shape[1]) for split, targets in labels.items()}
    if len(set(widths.values())) > 1:
        raise UserError(
            f"{source}: the splits have different numbers of labels {widths}; every split "
            "needs the same label columns"
        )
    width = next(iter(widths.values()))
    if num_labels is not None and width != num_labels:
        raise UserError(f"{source}: {width} label columns, but this dataset has {num_labels}")
    return width


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


def grouped_holdout(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out) whole groups at a time, stratified by label.

    Every item of a group (a patient, a lesion) lands on the same side. Each group is given
    its most frequent label (ties: the smallest; multi-label targets: one stratum for all),
    and within each such stratum the groups are visited in a seeded random order, each held
    out when that brings the held-out item count closer to ``fraction`` of the stratum's
    items. A stratum of two or more groups holds out at least one and never all of them; a
    stratum of one group keeps it. Proportions are thus near ``fraction`` when groups are
    small against the strata, and exact only when every group is one item.

    Args:
        labels: class index of each item (N,), or multi-label 0/1 targets (N, L).
        groups: the group of each item, any sortable values. Shape: (N,).
        fraction: the share of items to hold out, in (0, 1).
        seed: seed of the draw; the split depends only on the labels, groups and seed.

    Returns:
        Sorted positions kept and held out; together a partition of ``0..N-1``.
    """
    names, group_of = np.unique(np.asarray(groups), return_inverse=True)
    sizes = np.bincount(group_of, minlength=len(names))
    if labels.ndim == 1:
        votes = np.zeros((len(names), int(labels.max()) + 1), dtype=np.int64)
        np.add.at(votes, (group_of, labels), 1)
        stratum = votes.argmax(1)
    else:
        stratum = np.zeros(len(names), dtype=np.int64)
    rng = np.random.default_rng(seed)
    held_groups: list[int] = []
    for value in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == value))
        if len(members) < 2:
            continue
        target, held, chosen = fraction * sizes[members].sum(), 0, []
        for group in members:
            if abs(held + sizes[group] - target) < abs(held - target):
                held += sizes[group]
                chosen.append(group)
        if not chosen:
            chosen = [members[0]]
        elif len(chosen) == len(members):
            chosen.pop()
        held_groups.extend(chosen)
    held_out = np.flatnonzero(np.isin(group_of, held_groups))
    kept = np.setdiff1d(np.arange(len(group_of)), held_out)
    return kept, held_out
