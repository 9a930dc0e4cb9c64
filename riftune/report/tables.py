"""Markdown tables: a plain side-by-side summary (``riftune demo``) and the compare report.

Cells of the compare report read ``mean ± std`` over seeds; the best mean of each column is
bold, where "best" follows the column's stated direction (higher or lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

from riftune.report.aggregate import metric_mean, regularizer_label, select_lambda
from riftune.report.claims import claims_table, published_line
from riftune.report.default_rule import default_rule_markdown
from riftune.report.markdown import MISSING, markdown_table

Formatter = str | Callable[[Any], str]


@dataclass(frozen=True)
class MetricColumn:
    """One metric column of the compare report.

    Attributes:
        key: the dotted metric key in the run records, e.g. ``"test.acc"``.
        header: the column title (the direction arrow is appended).
        better: ``"higher"`` or ``"lower"``: which mean is marked best.
        fmt: format spec for the mean and the std, e.g. ``".3f"``.
        named_if_absent: whether the legend names the column when no run reports it (off for
            columns added after grids were committed, so their reports stay as they were).
    """

    key: str
    header: str
    better: Literal["higher", "lower"]
    fmt: str = ".3f"
    named_if_absent: bool = True

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', got {self.better!r}")

    @property
    def title(self) -> str:
        """The header with its direction: ``"Acc ↑"`` or ``"ECE ↓"``."""
        return f"{self.header} {'↑' if self.better == 'higher' else '↓'}"


#: The columns of ``riftune compare``'s report.md, with the direction in which each is better.
COMPARE_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("test.acc", "Acc", "higher"),
    MetricColumn("test.auc", "AUC", "higher"),
    MetricColumn("test.cka", "CKA", "higher"),
    MetricColumn("test.ci.auc.low", "AUC 95% CI low", "higher", named_if_absent=False),
    MetricColumn("test.ci.auc.high", "AUC 95% CI high", "higher", named_if_absent=False),
    MetricColumn("robust.mean_auc", "Corrupted AUC", "higher", named_if_absent=False),
    MetricColumn("test.sharpness", "Sharpness", "lower", ".4g"),
    MetricColumn("test.hessian_top_eig", "Hessian λmax", "lower", ".4g"),
    MetricColumn("transfer.retained", "Retained", "higher"),
    MetricColumn("test.ece", "ECE", "lower"),
    MetricColumn("train_step_ms", "Step ms", "lower", ".1f"),
    MetricColumn("val.auc", "Val AUC", "higher"),
    MetricColumn("val.cka", "Val CKA", "higher"),
)


def summary_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, Formatter]]
) -> str:
    """A side-by-side Markdown table, one row per run (used by ``riftune demo``).

    Args:
        rows: one mapping per run, e.g. ``{"run": "full + rift", "acc": 0.83, "seconds": 41.2}``.
        columns: ``(key, header, fmt)`` per column; ``fmt`` is a format spec (``".3f"``, ``""``
            for ``str``) or a callable. Missing or ``None`` values print as "–".

    Returns:
        The table; columns whose values are all numbers are right-aligned.
    """
    cells = [
        [MISSING if row.get(key) is None else _format(row[key], fmt) for key, _, fmt in columns]
        for row in rows
    ]
    right = [
        any(row.get(key) is not None for row in rows)
        and all(row.get(key) is None or isinstance(row[key], Real) for row in rows)
        for key, _, _ in columns
    ]
    return markdown_table([header for _, header, _ in columns], cells, right)


def format_stat(stat: Mapping[str, Any] | None, fmt: str) -> str:
    """``"mean ± std"`` with ``fmt`` for both; std "–" when n = 1; "–" when there is no stat."""
    if stat is None:
        return MISSING
    std = stat.get("std")
    return f"{stat['mean']:{fmt}} ± {MISSING if std is None else format(std, fmt)}"


def best_rows(groups: Sequence[Mapping[str, Any]], column: MetricColumn) -> set[int]:
    """Indices of the groups with the best finite mean in ``column`` (all of them on a tie).

    Empty when fewer than two groups report a finite mean: there is nothing to compare.
    """
    means = {i: metric_mean(g, column.key) for i, g in enumerate(groups)}
    finite = {i: m for i, m in means.items() if math.isfinite(m)}
    if len(finite) < 2:
        return set()
    best = max(finite.values()) if column.better == "higher" else min(finite.values())
    return {i for i, m in finite.items() if m == best}


def compare_report_markdown(
    groups: Sequence[Mapping[str, Any]],
    columns: Sequence[MetricColumn] = COMPARE_COLUMNS,
    lambda_key: str | None = "val.auc",
    title: str = "riftune compare",
    notes: Sequence[str] = (),
    sweep: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The ``report.md`` of ``riftune compare``: one table per (dataset, method).

    Rows are regularizers (with their variant), at the λ chosen by :func:`select_lambda` on the
    mean of ``lambda_key`` (``None``: every λ gets its own row). Cells are mean ± sample std
    (``ddof=1``) over seeds, "–" for the std of a single seed. In each table, the best mean of
    each column is bold, by the column's direction; columns no group reports are left out and
    named in the legend.

    Args:
        groups: groups from :func:`~riftune.report.aggregate.aggregate_runs`.
        columns: the metric columns and their directions.
        lambda_key: the validation metric λ is selected on (higher is better), or ``None``.
        title: the level-1 heading.
        notes: extra legend lines (e.g. the command that produced the grid).
        sweep: groups of every λ that ran (chosen or not); with them the report ends with the
            rule that picks ``--reg rift``'s defaults (:mod:`riftune.report.default_rule`).

    Returns:
        The Markdown document, ending with a newline.
    """
    shown = select_lambda(groups, key=lambda_key) if lambda_key else [dict(g) for g in groups]
    present = [c for c in columns if any(c.key in g["metrics"] for g in shown)]
    absent = [c for c in columns if c not in present and c.named_if_absent]

    tables: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for group in shown:
        tables.setdefault((group.get("dataset"), group["method"]), []).append(group)

    parts = [f"# {title}", ""]
    for (dataset, method), members in tables.items():
        heading = f"{dataset} · {method}" if dataset is not None else str(method)
        parts += [f"## {heading}", "", _method_table(members, present), ""]
        published = published_line(dataset) if method == "full" else ""
        if published:
            parts += [published, ""]
        against = relative_to_plain_table(members)
        if against:
            parts += ["Against `none` (differences of the means above):", "", against, ""]
        claims = claims_table(members)
        if claims:
            parts += [claims, ""]
    rule = default_rule_markdown(sweep) if sweep else ""
    if rule:
        parts += ["## Default for `--reg rift`", "", rule, ""]
    parts += ["## Legend", "", *_legend(shown, present, absent, lambda_key, notes)]
    return "\n".join(parts) + "\n"


#: (key, header, kind) of the columns compared with plain finetuning: "points" is the
#: difference of means ×100, "percent" the relative change of means ×100.
RELATIVE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("test.acc", "Acc Δ (points)", "points"),
    ("test.auc", "AUC Δ (points)", "points"),
    ("test.cka", "CKA change", "percent"),
    ("test.sharpness", "Sharpness change", "percent"),
    ("transfer.retained", "Retained Δ (points)", "points"),
    ("val.auc", "Val AUC Δ (points)", "points"),
    ("val.cka", "Val CKA change", "percent"),
)


def relative_to_plain_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """Each group against the ``none`` group of the same table, from their means.

    For a metric with means m (group) and m₀ (``none``): "points" = 100·(m − m₀) and
    "percent" = 100·(m − m₀)/|m₀| (shown with a sign and %). Columns neither reports are left
    out; the empty string when the table has no ``none`` group or nothing else.
    """
    plain = next((g for g in groups if g["reg"] == "none"), None)
    others = [g for g in groups if g is not plain]
    if plain is None or not others:
        return ""
    columns = [
        c
        for c in RELATIVE_COLUMNS
        if math.isfinite(metric_mean(plain, c[0]))
        and any(math.isfinite(metric_mean(g, c[0])) for g in others)
    ]
    rows = []
    for group in others:
        cells = [regularizer_label(group), _format_lam(group.get("lam"))]
        for key, _, kind in columns:
            value, base = metric_mean(group, key), metric_mean(plain, key)
            if not math.isfinite(value):
                cells.append(MISSING)
            elif kind == "points":
                cells.append(f"{100 * (value - base):+.1f}")
            else:
                cells.append(f"{100 * (value - base) / abs(base):+.0f}%" if base else MISSING)
        rows.append(cells)
    headers = ["Regularizer", "λ", *(header for _, header, _ in columns)]
    return markdown_table(headers, rows, [False, True, *([True] * len(columns))])


def _method_table(groups: Sequence[Mapping[str, Any]], columns: Sequence[MetricColumn]) -> str:
    best = [best_rows(groups, column) for column in columns]
    rows = []
    for i, group in enumerate(groups):
        cells = [regularizer_label(group), _format_lam(group.get("lam")), str(group["n"])]
        for column, winners in zip(columns, best, strict=True):
            cell = format_stat(group["metrics"].get(column.key), column.fmt)
            cells.append(f"**{cell}**" if i in winners else cell)
        rows.append(cells)
    headers = ["Regularizer", "λ", "n", *(c.title for c in columns)]
    return markdown_table(headers, rows, [False, True, True, *([True] * len(columns))])


def _legend(
    groups: Sequence[Mapping[str, Any]],
    present: Sequence[MetricColumn],
    absent: Sequence[MetricColumn],
    lambda_key: str | None,
    notes: Sequence[str],
) -> list[str]:
    higher = ", ".join(c.header for c in present if c.better == "higher") or MISSING
    lower = ", ".join(c.header for c in present if c.better == "lower") or MISSING
    seeds = sorted({s for g in groups for s in g["seeds"]}, key=str)
    lines = [
        "- Cells: mean ± sample standard deviation (ddof = 1) over seeds; "
        f"“{MISSING}” for the std of a single seed. n = number of seeds.",
        f"- Higher is better (↑): {higher}. Lower is better (↓): {lower}.",
        "- Bold: the best mean of its column within its table.",
        f"- Seeds: {', '.join(map(str, seeds)) or MISSING}.",
        "- Columns: " + "; ".join(f"{c.header} = `{c.key}`" for c in present) + ".",
    ]
    if lambda_key:
        lines.append(
            f"- λ: chosen per method and regularizer by the highest mean `{lambda_key}` "
            "(validation only); ties go to the smaller λ."
        )
    if absent:
        lines.append(
            "- Not reported by any run: "
            + ", ".join(f"{c.header} (`{c.key}`)" for c in absent)
            + "."
        )
    return lines + [f"- {note}" for note in notes]


def _format_lam(lam: Any) -> str:
    return (
        MISSING if lam is None else format(lam, "g") if isinstance(lam, int | float) else str(lam)
    )


def _format(value: Any, fmt: Formatter) -> str:
    return fmt(value) if callable(fmt) else format(value, fmt)
