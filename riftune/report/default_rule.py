"""The rule that picks ``--reg rift``'s defaults from a grid (docs/strength.md, "Defaults").

A candidate is one RIFT variant at one λ (or one budget) of full finetuning. In every dataset
table (dataset and training-set size) of the grid it has the mean validation AUC a and CKA c over
its seeds; plain finetuning (``none``) has a₀. The candidate *qualifies* when
a − a₀ ≥ −0.005 (half an AUC point) in every table, and the rule picks the qualifying candidate
with the highest validation CKA averaged over the tables. Beside each difference stands its
standard error, sqrt(s²/n + s₀²/n₀) from the sample stds over seeds, so a reader sees whether
the rule acted on a difference larger than noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from riftune.report.aggregate import metric_mean
from riftune.report.markdown import MISSING, markdown_table

AUC_TOLERANCE = 0.005


@dataclass(frozen=True)
class Candidate:
    """One RIFT variant at one λ, and its standing in each dataset table."""

    variant: str
    lam: float | None
    auc_deltas: dict[str, tuple[float, float]]  # table -> (a − a₀, its standard error)
    ckas: dict[str, float]  # table -> mean validation CKA

    @property
    def qualifies(self) -> bool:
        return all(delta >= -AUC_TOLERANCE for delta, _ in self.auc_deltas.values())

    @property
    def mean_cka(self) -> float:
        return sum(self.ckas.values()) / len(self.ckas)

    @property
    def label(self) -> str:
        lam = "budget" if self.lam is None else f"λ = {self.lam:g}"
        return f"rift ({self.variant}), {lam}"


def _standard_error(group: Mapping[str, Any], key: str) -> float:
    stat = group["metrics"].get(key)
    if stat is None or stat.get("std") is None:
        return math.nan
    return float(stat["std"]) / math.sqrt(stat["n"])


def rift_candidates(groups: Sequence[Mapping[str, Any]], method: str = "full") -> list[Candidate]:
    """The candidates present in every table that has a ``none`` group, best first: qualifying
    ones before the others, then by mean validation CKA."""
    plains = {g["dataset"]: g for g in groups if g["method"] == method and g["reg"] == "none"}
    found: dict[tuple[str, float | None], dict[str, Mapping[str, Any]]] = {}
    for group in groups:
        if group["method"] == method and group["reg"] == "rift" and group["dataset"] in plains:
            key = (group.get("variant") or "", group.get("lam"))
            found.setdefault(key, {})[group["dataset"]] = group
    candidates = []
    for (variant, lam), tables in found.items():
        if set(tables) != set(plains):
            continue
        deltas, ckas = {}, {}
        for table, group in tables.items():
            plain = plains[table]
            delta = metric_mean(group, "val.auc") - metric_mean(plain, "val.auc")
            se = math.hypot(_standard_error(group, "val.auc"), _standard_error(plain, "val.auc"))
            deltas[table], ckas[table] = (delta, se), metric_mean(group, "val.cka")
        candidates.append(Candidate(variant, lam, deltas, ckas))
    return sorted(candidates, key=lambda c: (not c.qualifies, -c.mean_cka))


def default_rule_markdown(groups: Sequence[Mapping[str, Any]]) -> str:
    """The rule's table (every candidate, each table's validation ΔAUC ± its standard error and
    validation CKA) and its verdict; the empty string when the grid holds no candidate."""
    candidates = rift_candidates(groups)
    if not candidates:
        return ""
    tables = list(candidates[0].auc_deltas)
    rows = []
    for c in candidates:
        cells = [c.label]
        for table in tables:
            delta, se = c.auc_deltas[table]
            se_text = MISSING if math.isnan(se) else f"{100 * se:.1f}"
            cells.append(f"{100 * delta:+.1f} ± {se_text} / {c.ckas[table]:.3f}")
        cells += [f"{c.mean_cka:.3f}", "yes" if c.qualifies else "no"]
        rows.append(cells)
    headers = ["Candidate", *tables, "Mean val CKA", "Qualifies"]
    table = markdown_table(headers, rows, [False, *[True] * (len(tables) + 1), False])
    best = candidates[0]
    if best.qualifies:
        verdict = (
            f"The rule picks **{best.label}**: the highest mean validation CKA "
            f"({best.mean_cka:.3f}) among candidates whose validation AUC stays within "
            f"{100 * AUC_TOLERANCE:g} point of `none`'s in every table."
        )
    else:
        verdict = (
            "No candidate stays within "
            f"{100 * AUC_TOLERANCE:g} point of `none`'s validation AUC in every table."
        )
    return "\n".join([
        "Cells: validation AUC minus `none`'s, in points ± the standard error of that "
        "difference (seeds), / mean validation CKA.",
        "",
        table,
        "",
        verdict,
    ])  # fmt: skip
