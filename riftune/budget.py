"""A similarity budget: the regularizer's weight λ as a Lagrange multiplier found by dual ascent.

The public face of :mod:`riftune.engine.weight`, where the weights live and their formulas are
written (:class:`DualAscentWeight`, :class:`ConstantWeight`), for use in your own training loop
(README, "Use RIFT in your own training loop"):

    lam = DualAscentWeight(budget_for_similarity("rift", 0.8), lr=0.5)
    loss = task + lam.value * penalty
    ...
    lam.update(penalty.item())
"""

from __future__ import annotations

from riftune import regularizers
from riftune.engine.weight import MODES, ConstantWeight, DualAscentWeight, LossWeight, Mode
from riftune.errors import UserError
from riftune.options import Section


def budget_for_similarity(
    regularizer: str, similarity: float, options: Section | None = None
) -> float:
    """ε such that ``penalty <= ε`` means ``similarity >= s`` for ``--reg regularizer``.

    Each regularizer says how (:meth:`~riftune.regularizers.Regularizer.budget_for_similarity`):
    paired RIFT's D = 2 − 2s, the CKA penalty's D = 1 − s.

    Args:
        regularizer: the registered name (``--reg``).
        similarity: s ∈ [0, 1].
        options: the regularizer's options; None: its defaults (``--reg rift`` matches paired).

    Raises:
        UserError: ``similarity`` outside [0, 1], or a regularizer whose penalty is no
            similarity of fixed scale.
    """
    if not 0 <= similarity <= 1:
        raise UserError(f"--target-similarity must be in [0, 1], got {similarity}")
    component = regularizers.get(regularizer)
    return component.budget_for_similarity(similarity, options or component.Options())


__all__ = [
    "MODES",
    "ConstantWeight",
    "DualAscentWeight",
    "LossWeight",
    "Mode",
    "budget_for_similarity",
]
