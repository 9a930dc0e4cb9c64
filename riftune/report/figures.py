"""The figures of a run and of a comparison, drawn with matplotlib's object-oriented API.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so
no display, no global figure state and no backend switch are involved; ``savefig`` renders
PNGs with Agg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from riftune.report.aggregate import regularizer_label, select_lambda

_LOSS_SERIES = (
    ("train_loss", "total"),
    ("train_task_loss", "task"),
    ("train_reg_loss", "regularizer"),
    ("val_loss", "validation"),
)
_VAL_SERIES = (("val_auc", "AUC"), ("val_acc", "accuracy"))
_CKA_SERIES = (("val_cka", "CKA"),)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DPI = 120
_AXIS_LABELS = {
    "test.acc": "test accuracy (test.acc)",
    "test.auc": "test AUC (test.auc)",
    "test.cka": "linear CKA to pretrained, test set (test.cka)",
}


def plot_training(
    history: Sequence[Mapping[str, Any]], path: str | Path, best_epoch: int | None = None
) -> None:
    """Write ``training.png``: training loss, validation AUC/accuracy and CKA per epoch.

    Three panels: the training loss (``train_loss`` total, ``train_task_loss``,
    ``train_reg_loss``, and ``val_loss`` if present; log scale when the series span more than
    two decades), validation ``val_auc`` and ``val_acc``, and ``val_cka`` (linear CKA to the
    pretrained embeddings). Under a similarity budget the loss panel also shows ``lam`` (λ at
    the end of each epoch) on a second axis. The x axis is ``epoch`` (1-based row number where a
    row lacks it).
    Missing keys, ``None`` and non-finite values are skipped; a panel with nothing to draw says
    so.

    Args:
        history: one mapping per epoch, as written to ``history.csv``.
        path: the PNG to write.
        best_epoch: if given, marked with a dashed vertical line on every panel.
    """
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    loss_ax, val_ax, cka_ax = fig.subplots(1, 3)
    panels = (
        (loss_ax, _LOSS_SERIES, "Training loss", "loss"),
        (val_ax, _VAL_SERIES, "Validation", "AUC / accuracy"),
        (cka_ax, _CKA_SERIES, "CKA to pretrained (validation)", "linear CKA"),
    )
    for ax, series, title, ylabel in panels:
        drawn = [_plot_series(ax, history, key, label) for key, label in series]
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        if not any(drawn):
            _say(ax, "not recorded")
            continue
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1, label="best epoch")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    _log_scale_if_wide(loss_ax)
    if any("lam" in row for row in history):  # a similarity budget: λ's trajectory
        lam_ax = loss_ax.twinx()
        lam_ax.set_prop_cycle(color=["tab:red"])
        _plot_series(lam_ax, history, "lam", "λ (budget)")
        lam_ax.set_ylabel("λ (budget)")
        lam_ax.legend(fontsize="small", loc="lower left")
    fig.savefig(path, dpi=_DPI)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components (float64).

    With X_c = X − mean(X) = U S Vᵀ, the scores are X_c V[:, :2] and the explained variance
    ratios S_k² / Σ S². S² and V come from the eigendecomposition of the smaller of the
    covariance X_cᵀX_c (d × d) and the Gram matrix X_cX_cᵀ (N × N, then V_k = X_cᵀU_k / S_k):
    a run's test embeddings (N ≈ 600, d = 1280) need only the N × N one, a third of a full SVD's
    time. Each component's sign is fixed so that its largest-magnitude loading is positive. Fewer
    than two components (d = 1 or N ≤ 2) are padded with zeros.

    Shape:
        x: (N, d). Returns scores (N, 2) and ratios (2,).
    """
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=0)
    n, d = centered.shape
    if n < d:
        eigenvalues, u = np.linalg.eigh(centered @ centered.T)
        s = np.sqrt(np.clip(eigenvalues[::-1], 0.0, None))
        top = u[:, ::-1][:, : min(2, n)]
        with np.errstate(divide="ignore", invalid="ignore"):
            vt = np.where(
                s[: top.shape[1], None] > 0, (centered.T @ top).T / s[: top.shape[1], None], 0.0
            )
    else:
        eigenvalues, v = np.linalg.eigh(centered.T @ centered)
        s = np.sqrt(np.clip(eigenvalues[::-1], 0.0, None))
        vt = v[:, ::-1].T
    k = min(2, vt.shape[0])
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    scores = np.zeros((x.shape[0], 2))
    scores[:, :k] = centered @ components.T
    total = float(np.sum(s**2))
    ratios = np.zeros(2)
    if total > 0:
        ratios[:k] = s[:k] ** 2 / total
    return scores, ratios


def plot_embeddings(
    pretrained: np.ndarray,
    finetuned: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    cka: float | None = None,
) -> None:
    """Write ``embeddings.png``: PCA of pretrained vs finetuned embeddings, coloured by class.

    Each set gets its own PCA (:func:`pca_2d`), so the panels show the shape of each
    representation, not a shared coordinate system.

    Args:
        pretrained: embeddings of the pretrained backbone. Shape: (N, d).
        finetuned: embeddings of the finetuned backbone, same samples. Shape: (N, d').
        labels: integer class of each sample. Shape: (N,).
        path: the PNG to write.
        class_names: legend name of class ``c`` is ``class_names[c]`` (else ``"class c"``).
        cka: linear CKA between the two sets, shown in the title when given.

    Raises:
        ValueError: the arrays are not 2-D/1-D or disagree on N, or N < 2.
    """
    pretrained, finetuned = np.asarray(pretrained), np.asarray(finetuned)
    labels = np.asarray(labels)
    if pretrained.ndim != 2 or finetuned.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"expected embeddings (N, d), (N, d') and labels (N,), got shapes {pretrained.shape}, "
            f"{finetuned.shape}, {labels.shape}"
        )
    if not len(pretrained) == len(finetuned) == len(labels) or len(labels) < 2:
        raise ValueError(
            f"embeddings and labels must describe the same N ≥ 2 samples, got {len(pretrained)}, "
            f"{len(finetuned)} and {len(labels)}"
        )
    classes = np.unique(labels)
    colours = _colours(len(classes))
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, data, name in zip(
        axes, (pretrained, finetuned), ("Pretrained", "Finetuned"), strict=True
    ):
        scores, ratios = pca_2d(data)
        for colour, cls in zip(colours, classes, strict=True):
            mask = labels == cls
            ax.scatter(
                *scores[mask].T, s=8, alpha=0.7, color=colour, label=_class_name(cls, class_names)
            )
        ax.set(
            title=f"{name} (d = {data.shape[1]})",
            xlabel=f"PC1 ({100 * ratios[0]:.1f}% var.)",
            ylabel=f"PC2 ({100 * ratios[1]:.1f}% var.)",
        )
        ax.grid(alpha=0.3)
    axes[1].legend(title="class", fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    title = "Test embeddings, PCA"
    fig.suptitle(title if cka is None else f"{title} — linear CKA = {cka:.3f}")
    fig.savefig(path, dpi=_DPI)


def plot_tradeoff(
    groups: Sequence[Mapping[str, Any]],
    path: str | Path,
    lambda_key: str | None = "val.auc",
    x_key: str = "test.cka",
    y_key: str = "test.acc",
) -> None:
    """Write ``tradeoff.png``: accuracy against CKA, one marker per (method, regularizer).

    Colour encodes the regularizer (with its variant), marker shape the finetuning method;
    error bars are the sample std over seeds (none for a single seed). One panel per dataset.
    Both legends sit outside the axes. Groups lacking either metric are left out.

    Args:
        groups: groups from :func:`~riftune.report.aggregate.aggregate_runs`.
        path: the PNG to write.
        lambda_key: λ is selected per (method, regularizer) on this metric with
            :func:`~riftune.report.aggregate.select_lambda`; ``None`` plots every λ.
        x_key: the metric on the x axis.
        y_key: the metric on the y axis.
    """
    shown = select_lambda(groups, key=lambda_key) if lambda_key else list(groups)
    shown = [g for g in shown if x_key in g["metrics"] and y_key in g["metrics"]]
    datasets = list(dict.fromkeys(g.get("dataset") for g in shown)) or [None]
    regs = list(dict.fromkeys(regularizer_label(g) for g in shown))
    methods = list(dict.fromkeys(str(g["method"]) for g in shown))
    colour = dict(zip(regs, _colours(len(regs)), strict=True))
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}

    fig = Figure(figsize=(5.2 * len(datasets) + 2.6, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(datasets)))
    for ax, dataset in zip(axes, datasets, strict=True):
        for group in (g for g in shown if g.get("dataset") == dataset):
            x, y = group["metrics"][x_key], group["metrics"][y_key]
            ax.errorbar(
                x["mean"],
                y["mean"],
                xerr=x["std"] or 0.0,
                yerr=y["std"] or 0.0,
                fmt=marker[str(group["method"])],
                color=colour[regularizer_label(group)],
                markersize=8,
                capsize=3,
            )
        ax.set(
            title=str(dataset) if dataset is not None else "",
            xlabel=_AXIS_LABELS.get(x_key, x_key),
            ylabel=_AXIS_LABELS.get(y_key, y_key),
        )
        ax.grid(alpha=0.3)
        if not shown:
            _say(ax, f"no run reports both {x_key} and {y_key}")

    reg_handles = [Line2D([], [], color=colour[r], marker="o", linestyle="", label=r) for r in regs]
    method_handles = [
        Line2D([], [], color="0.3", marker=marker[m], linestyle="", label=m) for m in methods
    ]
    fig.legend(
        handles=reg_handles, title="regularizer", loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )
    fig.legend(handles=method_handles, title="method", loc="lower left", bbox_to_anchor=(1.0, 0.0))
    fig.suptitle("Accuracy vs. similarity to the pretrained model (mean ± std over seeds)")
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (at least as high on both axes and higher
    on one), sorted by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i])


def plot_pareto(
    groups: Sequence[Mapping[str, Any]],
    path: str | Path,
    x_key: str = "test.cka",
    y_key: str = "test.auc",
) -> None:
    """Write ``pareto.png``: AUC against CKA, one panel per dataset table (dataset and training-set
    size), one point per (method, regularizer) with its std over seeds, the Pareto front (no
    other point has both a higher CKA and a higher AUC) drawn as a line and its points named."""
    shown = [g for g in groups if x_key in g["metrics"] and y_key in g["metrics"]]
    datasets = list(dict.fromkeys(g.get("dataset") for g in shown)) or [None]
    regs = list(dict.fromkeys(regularizer_label(g) for g in shown))
    methods = list(dict.fromkeys(str(g["method"]) for g in shown))
    colour = dict(zip(regs, _colours(len(regs)), strict=True))
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}
    columns = min(len(datasets), 2)
    rows = math.ceil(len(datasets) / columns)
    fig = Figure(figsize=(5.6 * columns + 3.0, 4.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, dataset in zip(axes, datasets, strict=False):
        members = [g for g in shown if g.get("dataset") == dataset]
        points = [(g["metrics"][x_key]["mean"], g["metrics"][y_key]["mean"]) for g in members]
        for group, (x, y) in zip(members, points, strict=True):
            ax.errorbar(
                x, y,
                xerr=group["metrics"][x_key]["std"] or 0.0,
                yerr=group["metrics"][y_key]["std"] or 0.0,
                fmt=marker[str(group["method"])], color=colour[regularizer_label(group)],
                markersize=7, capsize=2, alpha=0.85,
            )  # fmt: skip
        front = pareto_front(points)
        if front:
            ax.plot(*zip(*(points[i] for i in front), strict=True), color="0.2", lw=1, ls="--")
            for i in front:
                ax.annotate(regularizer_label(members[i]), points[i], fontsize=7,
                            xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.set(
            title=str(dataset) if dataset is not None else "",
            xlabel=_AXIS_LABELS.get(x_key, x_key),
            ylabel=_AXIS_LABELS.get(y_key, y_key),
        )
        ax.grid(alpha=0.3)
        if not members:
            _say(ax, f"no run reports both {x_key} and {y_key}")
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    reg_handles = [Line2D([], [], color=colour[r], marker="o", linestyle="", label=r) for r in regs]
    method_handles = [
        Line2D([], [], color="0.3", marker=marker[m], linestyle="", label=m) for m in methods
    ]
    front_handle = [Line2D([], [], color="0.2", ls="--", label="Pareto front")]
    fig.legend(handles=reg_handles + front_handle, title="regularizer", loc="upper left",
               bbox_to_anchor=(1.0, 1.0))  # fmt: skip
    fig.legend(handles=method_handles, title="method", loc="lower left", bbox_to_anchor=(1.0, 0.0))
    fig.suptitle("AUC vs. similarity to the pretrained model (mean ± std over seeds)")
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")


def _plot_series(ax: Axes, history: Sequence[Mapping[str, Any]], key: str, label: str) -> bool:
    points = [
        (row.get("epoch", i + 1), float(row[key]))
        for i, row in enumerate(history)
        if isinstance(row.get(key), Real) and math.isfinite(float(row[key]))
    ]
    if not points:
        return False
    ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    return True


def _log_scale_if_wide(ax: Axes) -> None:
    values = np.concatenate(
        [line.get_ydata() for line in ax.get_lines() if line.get_label() != "best epoch"] or [[]]
    )
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")


def _say(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _colours(n: int) -> list[tuple[float, float, float, float]]:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _class_name(cls: Any, class_names: Sequence[str] | None) -> str:
    if class_names is not None and isinstance(cls, np.integer) and 0 <= int(cls) < len(class_names):
        return str(class_names[int(cls)])
    return f"class {cls}"
