r"""The ladder of strengths ``riftune tune`` tries, anchored on plain finetuning's own drift.

By default RIFT's strength is a similarity budget (``--target-similarity S`` of paired RIFT,
whose penalty is D = 2 − 2s with s the orthogonal Procrustes similarity of a batch's
embeddings to their pretrained ones). The ladder is not a fixed list of S: it is placed
between the similarity that finetuning without a regularizer keeps by itself, s_plain, and 1,

.. math::

    S_k = 1 - f_k\,(1 - s_{plain}),\qquad f_k \in (0, 1)\ \text{(default 0.75, 0.5, 0.25)},

so rung k keeps a fraction f_k of plain finetuning's drift 1 − s_plain. Why anchored: a budget
binds only where it is above s_plain, and s_plain depends on the dataset and its size (plain
finetuning drifts further with more steps), so one fixed S bites hard on a large training set
and not at all on a small one (the 0.8 default lost AUC on the whole training sets and barely
bound at 50 images per class; issue 29). Fractions of plain's own drift mean the same thing on
every dataset.

s_plain is measured in the budget's units, on the same folds: each method's unregularized
trial runs ``--reg rift --rift-match paired --rift-q optimal --lam 0``. With λ = 0 the loss is
task + 0·D, so every weight update is the plain one bit for bit (tests/strength/test_ladder.py),
while history.csv logs D of every batch; the last epoch's mean penalty D̄ gives
s_plain = 1 − D̄/2, averaged over the folds.

Other regularizers (and RIFT with ``--ladder lam``) take a λ ladder instead (default 0.1, 1,
10 times the regularizer's own default λ): their penalties have no similarity of fixed scale,
or (cka) would need plain's drift measured in their own units by one more run per fold.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from riftune.errors import UserError

DEFAULT_DRIFT_FRACTIONS = (0.75, 0.5, 0.25)
"""Rungs of the budget ladder: the fractions of plain finetuning's drift each may keep."""

DEFAULT_LAM_FACTORS = (0.1, 1.0, 10.0)
"""Rungs of the λ ladder: multiples of the regularizer's default λ."""

ANCHOR_FLAGS = ("--reg", "rift", "--rift-match", "paired", "--rift-q", "optimal", "--lam", "0")
"""What an unregularized trial adds to log paired RIFT's penalty without training on it."""


def similarity_of_penalty(penalty: float) -> float:
    """s = 1 − D/2 of paired RIFT's penalty D = 2 − 2s."""
    return 1.0 - penalty / 2.0


def last_epoch_penalty(run: Path) -> float:
    """The mean penalty of the last epoch of a finished run (history.csv's train_reg_loss)."""
    path = run / "history.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: the run has not finished an epoch")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not rows[-1].get("train_reg_loss"):
        raise UserError(f"{path} has no train_reg_loss of a finished epoch")
    return float(rows[-1]["train_reg_loss"])


def anchor_similarity(penalties: Sequence[float]) -> float:
    """s_plain = 1 − mean(D)/2 over the unregularized runs' last-epoch penalties.

    Raises:
        UserError: no penalties.
    """
    if not penalties:
        raise UserError("the unregularized trials logged no penalty to anchor the ladder on")
    return similarity_of_penalty(sum(penalties) / len(penalties))


def budget_rungs(
    anchor: float, fractions: Sequence[float] = DEFAULT_DRIFT_FRACTIONS
) -> list[float]:
    """The target similarities S_k = 1 − f_k·(1 − anchor), rounded to 3 decimals, distinct, in
    the order of ``fractions``; a rung that rounds to 1 or to the anchor itself is dropped.

    Raises:
        UserError: a fraction outside (0, 1).
    """
    rungs: list[float] = []
    for fraction in fractions:
        if not 0 < fraction < 1:
            raise UserError(f"--budgets {fraction}: each fraction of plain's drift is in (0, 1)")
        target = round(1.0 - fraction * (1.0 - anchor), 3)
        if target not in rungs and round(anchor, 3) < target < 1.0:
            rungs.append(target)
    return rungs


def lam_rungs(default_lam: float, factors: Sequence[float] = DEFAULT_LAM_FACTORS) -> list[float]:
    """λ_k = factor_k · the regularizer's default λ, distinct, in order.

    Raises:
        UserError: a factor that is not > 0.
    """
    rungs: list[float] = []
    for factor in factors:
        if not factor > 0:
            raise UserError(f"--lams {factor}: each λ factor must be > 0")
        lam = float(f"{factor * default_lam:.6g}")
        if lam not in rungs:
            rungs.append(lam)
    return rungs
