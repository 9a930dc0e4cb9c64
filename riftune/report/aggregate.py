"""Group the runs of a ``riftune compare`` grid by configuration and summarize them over seeds.

A *run record* is a flat dict describing one finished run: what was run
(``method``, ``reg``, ``seed``, and optionally ``dataset``, ``variant``, ``lam``) and what it
measured, under the dotted keys of its ``metrics.json`` (``test.acc``, ``val.auc``,
``train_step_ms``, ...; see :func:`flatten_metrics`). A *group* gathers the runs that differ only
in their seed and holds, per metric, the mean, the sample standard deviation (``ddof=1``) and
the number of seeds that reported it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

#: The keys that identify a configuration; runs equal on all of them but ``seed`` are grouped.
GROUP_KEYS: tuple[str, ...] = ("dataset", "method", "reg", "variant", "lam")
REQUIRED_KEYS: tuple[str, ...] = ("method", "reg", "seed")
_NOT_IDENTITY = frozenset({"lam", "seeds", "n", "metrics"})


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a nested ``metrics.json`` into dotted keys, keeping numbers only.

    ``{"test": {"acc": 0.8}, "best_epoch": 3, "note": "x"}`` becomes
    ``{"test.acc": 0.8, "best_epoch": 3.0}``; booleans, strings, lists and ``None`` are left out.

    Args:
        metrics: the parsed ``metrics.json``.
        prefix: prepended to every key (used for recursion).

    Returns:
        The numeric leaves as floats under their dotted paths.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif _is_number(value):
            flat[name] = float(value)
    return flat


def regularizer_label(group: Mapping[str, Any]) -> str:
    """The regularizer name with its variant, e.g. ``"rift (paired)"`` or ``"none"``."""
    variant = group.get("variant")
    return f"{group['reg']} ({variant})" if variant else str(group["reg"])


def aggregate_runs(
    runs: Iterable[Mapping[str, Any]], group_by: Sequence[str] = GROUP_KEYS
) -> list[dict[str, Any]]:
    """Group run records by configuration and summarize each metric over seeds.

    For a metric with values x_1..x_n over the n seeds of a group that report it:
    mean = (1/n) Σ x_i and std = sqrt(Σ (x_i − mean)² / (n − 1)) (sample std, ``ddof=1``);
    with n = 1 the std is ``None`` (the report prints "–"). A NaN value is kept, so it makes the
    mean NaN rather than silently dropping a seed. Metrics are the numeric values of keys that
    are neither in ``group_by`` nor ``seed``; other string fields are ignored.

    Args:
        runs: run records; each needs ``method``, ``reg`` and ``seed``. Keys of ``group_by``
            that a record lacks count as ``None``.
        group_by: the keys that identify a configuration.

    Returns:
        One dict per configuration, sorted by its keys: the ``group_by`` keys, ``seeds``
        (sorted), ``n`` (number of runs) and ``metrics``: ``{key: {"mean", "std", "n"}}``.

    Raises:
        ValueError: a record lacks a required key, or two records share configuration and seed.
    """
    grouped: dict[tuple[Hashable, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        missing = [key for key in REQUIRED_KEYS if run.get(key) is None]
        if missing:
            raise ValueError(f"run record {dict(run)!r} lacks {missing}; add them to the record")
        grouped.setdefault(tuple(run.get(key) for key in group_by), []).append(run)

    groups = []
    for identity, members in grouped.items():
        seeds = [run["seed"] for run in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"configuration {dict(zip(group_by, identity, strict=True))} has repeated seeds "
                f"{sorted(seeds)}; remove the duplicate runs"
            )
        group: dict[str, Any] = dict(zip(group_by, identity, strict=True))
        group.update(seeds=sorted(seeds), n=len(members), metrics=_summarize(members, group_by))
        groups.append(group)
    return sorted(groups, key=lambda g: tuple(_sort_key(g.get(key)) for key in group_by))


def select_lambda(
    groups: Iterable[Mapping[str, Any]],
    key: str = "val.auc",
    higher_is_better: bool = True,
) -> list[dict[str, Any]]:
    """Keep, per configuration without λ, the group whose λ gives the best mean of ``key``.

    Groups are compared within each configuration that differs only in ``lam`` (by default
    dataset, method, reg and variant); ties go to the smaller λ
    (``None``, no λ, counts as smallest). Only the selection metric (validation AUC by
    default) is looked at, never a test metric. Already-selected groups pass unchanged.

    Args:
        groups: groups from :func:`aggregate_runs`.
        key: the metric to select on.
        higher_is_better: whether a larger mean of ``key`` is better.

    Returns:
        The chosen groups, in input order.

    Raises:
        ValueError: no group of some configuration has a finite mean of ``key``.
    """
    groups = list(groups)
    cells: dict[tuple[Hashable, ...], list[int]] = {}
    for index, group in enumerate(groups):
        cell = tuple(sorted((k, v) for k, v in group.items() if k not in _NOT_IDENTITY))
        cells.setdefault(cell, []).append(index)

    sign = -1.0 if higher_is_better else 1.0
    chosen = []
    for cell, indices in cells.items():
        scored = [(metric_mean(groups[i], key), i) for i in indices]
        scored = [(score, i) for score, i in scored if math.isfinite(score)]
        if not scored:
            raise ValueError(
                f"no run of {dict(cell)} reports a finite "
                f"{key!r}; check its metrics.json files or select on another key"
            )
        _, best = min(scored, key=lambda si: (sign * si[0], _sort_key(groups[si[1]].get("lam"))))
        chosen.append(best)
    return [dict(groups[i]) for i in sorted(chosen)]


def metric_mean(group: Mapping[str, Any], key: str) -> float:
    """The mean of ``key`` in a group, NaN when no run reported it."""
    stat = group["metrics"].get(key)
    return float("nan") if stat is None else float(stat["mean"])


def _summarize(
    members: Sequence[Mapping[str, Any]], group_by: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    skip = {*group_by, "seed"}
    values: dict[str, list[float]] = {}
    for run in members:
        for key, value in run.items():
            if key not in skip and _is_number(value):
                values.setdefault(key, []).append(float(value))
    stats: dict[str, dict[str, float | int | None]] = {}
    for key, series in values.items():
        array = np.asarray(series, dtype=np.float64)
        std = float(np.std(array, ddof=1)) if array.size > 1 else None
        stats[key] = {"mean": float(np.mean(array)), "std": std, "n": int(array.size)}
    return stats


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _sort_key(value: object) -> tuple[int, float, str]:
    """Orders ``None`` first, then numbers by value, then anything else by its text."""
    if value is None:
        return (0, 0.0, "")
    if _is_number(value):
        return (1, float(value), "")
    return (2, 0.0, str(value))
