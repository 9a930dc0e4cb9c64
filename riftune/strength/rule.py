"""The rule of ``riftune tune``: the lowest drift whose AUC is non-inferior to plain finetuning's.

Every candidate is scored on the same folds (or seeds) as plain finetuning, so its AUC is
compared pair by pair: with d_k = AUC_k − AUC_plain,k over the n folds,

    lower bound = mean(d) − z · sd(d) / √n        (sd with n − 1 degrees of freedom)

and the candidate is non-inferior when the lower bound is at least −tolerance (a one-sided
test at level 5% for z = 1.645). Among the non-inferior candidates that were evaluated on all
of plain's folds, and plain finetuning itself, the lowest drift 1 − mean CKA wins; a candidate
whose mean is within the tolerance but whose differences scatter widely does not qualify.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

PLAIN = "plain"


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's validation scores, fold by fold.

    Attributes:
        name: what it is: ``"plain"``, ``"rift[budget=0.85]"``, ``"lora+rift[budget=0.7]"``.
        auc: AUC per fold (or seed), in plain's order; fewer than plain's = pruned.
        cka: validation CKA to the pretrained model, same folds.
    """

    name: str
    auc: tuple[float, ...]
    cka: tuple[float, ...]


@dataclass(frozen=True)
class Estimate:
    """What the folds say about one candidate, and whether it qualifies.

    Attributes:
        name: the candidate.
        n: folds it was evaluated on.
        mean_auc: mean AUC over those folds.
        mean_cka: mean CKA to the pretrained model.
        drift: 1 − mean_cka.
        diff_mean: mean of the paired differences d_k = AUC_k − AUC_plain,k.
        diff_se: their standard error sd(d) / √n (NaN for n < 2; 0 for plain).
        lower_bound: diff_mean − z · diff_se.
        qualifies: non-inferior on all of plain's folds (plain always does).
        reason: why, in words.
        auc_se: standard error of mean_auc, sd(AUC) / √n (NaN for n < 2).
        drift_se: standard error of drift, sd(CKA) / √n (NaN for n < 2).
    """

    name: str
    n: int
    mean_auc: float
    mean_cka: float
    drift: float
    diff_mean: float
    diff_se: float
    lower_bound: float
    qualifies: bool
    reason: str
    auc_se: float
    drift_se: float


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, every estimate (plain's first), the explanation, and the
    tolerance (AUC units) and z the rule was applied with."""

    chosen: str
    estimates: tuple[Estimate, ...]
    explanation: str
    tolerance: float
    z: float


def choose(
    plain: CandidateScores,
    candidates: Sequence[CandidateScores],
    *,
    tolerance: float = 0.005,
    z: float = 1.645,
    min_folds: int | None = None,
) -> Choice:
    """Choose the candidate with the lowest drift whose AUC is non-inferior to plain's.

    A candidate qualifies iff it was evaluated on at least ``min_folds`` folds (default: all
    of plain's; fewer means it was pruned), on at least 2 (a standard error needs them), and
    mean(d) − z · se(d) ≥ −tolerance. Among the qualifying candidates and plain finetuning the
    lowest drift wins; equal drifts go to the higher lower bound, then to the earlier one
    (plain first). When none qualifies the choice is plain, and the explanation says by how
    much the best lower bound missed.

    Args:
        plain: plain finetuning's scores, the reference.
        candidates: the others, each scored on a prefix of plain's folds.
        tolerance: the non-inferiority margin in AUC units (0.005 = 0.5 AUC points).
        z: the one-sided normal quantile of the bound (1.645: 95%).
        min_folds: the folds a candidate needs to qualify; default all of plain's.

    Raises:
        ValueError: mismatched AUC and CKA counts, a candidate with more folds than plain, a
            repeated name, or a negative tolerance.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance}")
    names = [plain.name, *(c.name for c in candidates)]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names repeat: {names}")
    needed = len(plain.auc) if min_folds is None else min_folds
    reference = replace(
        _estimate(plain, plain, z),
        diff_mean=0.0,
        diff_se=0.0,
        lower_bound=0.0,
        qualifies=True,
        reason="the reference",
    )
    estimates = [reference]
    for candidate in candidates:
        if len(candidate.auc) > len(plain.auc):
            raise ValueError(
                f"{candidate.name} has {len(candidate.auc)} folds, plain only {len(plain.auc)}"
            )
        estimate = _estimate(candidate, plain, z)
        estimates.append(_judge(estimate, needed, len(plain.auc), tolerance))
    winner = min(
        (e for e in estimates if e.qualifies),
        key=lambda e: (e.drift, -e.lower_bound),
    )
    explanation = _explain(winner, estimates, reference, tolerance, z)
    return Choice(winner.name, tuple(estimates), explanation, tolerance, z)


def _estimate(scores: CandidateScores, plain: CandidateScores, z: float) -> Estimate:
    auc, cka = np.asarray(scores.auc, float), np.asarray(scores.cka, float)
    if len(auc) != len(cka):
        raise ValueError(f"{scores.name}: {len(auc)} AUCs but {len(cka)} CKAs")
    n = len(auc)
    diffs = auc - np.asarray(plain.auc, float)[:n]
    mean_cka = float(cka.mean()) if n else math.nan
    se, auc_se, drift_se = (
        (float(v.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan) for v in (diffs, auc, cka)
    )
    diff_mean = float(diffs.mean()) if n else math.nan
    return Estimate(
        name=scores.name,
        n=n,
        mean_auc=float(auc.mean()) if n else math.nan,
        mean_cka=mean_cka,
        drift=1.0 - mean_cka,
        diff_mean=diff_mean,
        diff_se=se,
        lower_bound=diff_mean - z * se,
        qualifies=False,
        reason="",
        auc_se=auc_se,
        drift_se=drift_se,
    )


def _judge(estimate: Estimate, needed: int, folds: int, tolerance: float) -> Estimate:
    """The estimate with ``qualifies`` and ``reason`` filled in."""
    if estimate.n < needed:
        return replace(estimate, reason=f"pruned after {estimate.n} of {folds} folds")
    if estimate.n < 2:
        return replace(estimate, reason="one fold: no standard error, so no bound")
    bound = f"lower bound {estimate.lower_bound:+.4f}"
    if estimate.lower_bound >= -tolerance:
        return replace(estimate, qualifies=True, reason=f"{bound} >= {-tolerance:+.4f}")
    return replace(estimate, reason=f"{bound} < {-tolerance:+.4f}: may lose AUC")


def _explain(
    winner: Estimate,
    estimates: list[Estimate],
    reference: Estimate,
    tolerance: float,
    z: float,
) -> str:
    points = f"{100 * tolerance:g} AUC points"
    others = estimates[1:]
    qualified = [e for e in others if e.qualifies]
    if winner.name != reference.name:
        return (
            f"{winner.name}: the lowest drift ({winner.drift:.3f}, plain {reference.drift:.3f}) "
            f"of the {len(qualified)} candidate(s) whose AUC is non-inferior to plain "
            f"finetuning's within {points} (paired difference {winner.diff_mean:+.4f} ± "
            f"{winner.diff_se:.4f}, mean - {z:g}·se = {winner.lower_bound:+.4f} over "
            f"{winner.n} folds)."
        )
    if qualified:
        return (
            f"plain: {len(qualified)} candidate(s) are non-inferior within {points}, but none "
            f"drifts less than plain finetuning ({reference.drift:.3f})."
        )
    bounded = [e for e in others if e.n >= 2 and not math.isnan(e.lower_bound)]
    if not bounded:
        return "plain: nothing qualified; no candidate was evaluated on two or more folds."
    best = max(bounded, key=lambda e: e.lower_bound)
    return (
        f"plain: nothing qualified. No candidate's AUC was shown non-inferior to plain "
        f"finetuning's within {points}; the best, {best.name}, has mean - {z:g}·se = "
        f"{best.lower_bound:+.4f} after {best.n} folds, {-tolerance - best.lower_bound:.4f} "
        f"short of {-tolerance:+.4f}."
    )
