"""Few-shot training subsets: K images per class, drawn reproducibly from a seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from riftune.errors import UserError


def sample_shots(
    labels: np.ndarray,
    shots: int,
    seed: int,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Positions of ``shots`` training items per class, drawn without replacement.

    Classes are drawn in index order from one ``numpy.random.default_rng(seed)``, so the
    subset depends only on the labels, ``shots`` and ``seed``.

    Args:
        labels: class index of each training item. Shape: (N,).
        shots: items per class, K ≥ 1.
        seed: seed of the draw.
        num_classes: number of classes; every class must have at least K items.
        class_names: names for messages.

    Returns:
        The chosen positions, sorted. Shape: (num_classes · K,) int64.

    Raises:
        UserError: multi-label targets, ``shots`` < 1, or a class with fewer than ``shots``
            items.
    """
    if labels.ndim != 1:
        raise UserError(
            "--shots draws K images per class, and multi-label images have no single class; "
            "drop --shots"
        )
    if shots < 1:
        raise UserError(f"--shots must be at least 1; got {shots}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        if len(members) < shots:
            name = f"{cls} ({class_names[cls]})" if class_names else str(cls)
            fix = f"lower --shots to at most {len(members)}" if len(members) else "drop --shots"
            raise UserError(
                f"--shots {shots}: class {name} has only {len(members)} training images; {fix}"
            )
        chosen.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
