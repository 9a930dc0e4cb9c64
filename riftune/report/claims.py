"""The paper's three claims, checked for each regularizer against plain finetuning (``none``).

Zu et al. (arXiv 2503.07399) claim that RIFT raises CKA to the pretrained model by at least 30%,
lowers sharpness by about 42%, and keeps accuracy within about a point. From the means of a
group (m) and of ``none`` in the same table (m₀):

- CKA: change 100·(m − m₀)/m₀; holds at ≥ +30%.
- Drift, 1 − CKA, beside it: when plain finetuning already keeps CKA high, a relative CKA gain
  saturates while halving the drift still means something.
- Sharpness: change 100·(m − m₀)/m₀; holds at ≤ −42%.
- Accuracy: 100·(m − m₀) points; holds at ≥ −1 point.

A mark reads ✓ (holds), ~ (the right direction, short of the claimed size) or ✗ (fails).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from riftune.report.aggregate import metric_mean, regularizer_label
from riftune.report.markdown import MISSING, markdown_table

CKA_GAIN = 30.0  # percent
SHARPNESS_DROP = 42.0  # percent
ACCURACY_SLACK = 1.0  # points

#: MedMNIST v2 (Yang et al., Scientific Data 2023, Table 3), ResNet-18 at 28 px: (AUC, acc).
PUBLISHED_RESNET18_28 = {"breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854)}


def _relative(value: float, base: float) -> float:
    return 100.0 * (value - base) / abs(base) if base else math.nan


def _mark(holds: bool, right_direction: bool) -> str:
    return "✓" if holds else "~" if right_direction else "✗"


def claims_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """One row per group but ``none``: its CKA, drift, sharpness and accuracy against ``none``'s,
    each claim marked. The empty string without a ``none`` group or anything to compare."""
    plain = next((g for g in groups if g["reg"] == "none"), None)
    others = [g for g in groups if g is not plain]
    if plain is None or not others:
        return ""
    cka0, sharp0, acc0 = (metric_mean(plain, k) for k in ("test.cka", "test.sharpness", "test.acc"))
    rows = []
    for group in others:
        cka, sharp, acc = (
            metric_mean(group, k) for k in ("test.cka", "test.sharpness", "test.acc")
        )
        cka_change, sharp_change = _relative(cka, cka0), _relative(sharp, sharp0)
        drift_change = _relative(1.0 - cka, 1.0 - cka0)
        acc_delta = 100.0 * (acc - acc0)
        cells = [regularizer_label(group), _lam(group.get("lam"))]
        if math.isfinite(cka_change):
            mark = _mark(cka_change >= CKA_GAIN, cka_change > 0)
            cells += [f"{cka:.3f}", f"{cka_change:+.0f}% {mark}", f"{1 - cka:.3f}",
                      f"{drift_change:+.0f}%"]  # fmt: skip
        else:
            cells += [MISSING] * 4
        if math.isfinite(sharp_change):
            cells.append(
                f"{sharp_change:+.0f}% {_mark(sharp_change <= -SHARPNESS_DROP, sharp_change < 0)}"
            )
        else:
            cells.append(MISSING)
        cells.append(
            f"{acc_delta:+.1f} {_mark(acc_delta >= -ACCURACY_SLACK, acc_delta >= -ACCURACY_SLACK)}"
            if math.isfinite(acc_delta)
            else MISSING
        )
        rows.append(cells)
    headers = ["Regularizer", "λ", "CKA", f"CKA change (≥ +{CKA_GAIN:g}%)", "Drift 1 − CKA",
               "Drift change", f"Sharpness change (≈ −{SHARPNESS_DROP:g}%)",
               f"Acc Δ points (≥ −{ACCURACY_SLACK:g})"]  # fmt: skip
    lead = (
        f"Against `none` (CKA {cka0:.3f}, drift {1 - cka0:.3f}), the paper's claims: "
        "✓ holds, ~ right direction but short, ✗ fails:"
    )
    return lead + "\n\n" + markdown_table(headers, rows, [False] + [True] * (len(headers) - 1))


def published_line(dataset: str | None) -> str:
    """MedMNIST v2's ResNet-18 (28 px) row for a whole training set of a dataset it lists."""
    if dataset not in PUBLISHED_RESNET18_28:
        return ""
    auc, acc = PUBLISHED_RESNET18_28[dataset]
    return (
        f"Published beside `none` (MedMNIST v2, Yang et al. 2023, Table 3, ResNet-18 at 28 px, "
        f"whole training set): AUC {auc:.3f}, accuracy {acc:.3f}."
    )


def _lam(lam: Any) -> str:
    return (
        MISSING if lam is None else format(lam, "g") if isinstance(lam, int | float) else str(lam)
    )
