"""The figures a clinician or reviewer asks for: ROC curves, a reliability diagram, a confusion
matrix (``roc.png``, ``calibration.png``, ``confusion.png``), and the numbers they show.

The numbers are plain functions of logits and labels (p = softmax(logits)), so tests compare
them with scikit-learn; the figures are built on :class:`matplotlib.figure.Figure` and saved
with Agg, never through ``pyplot``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from riftune.report.figures import _colours

ECE_BINS = 15
"""Bins of the reliability diagram: those of :func:`riftune.metrics.expected_calibration_error`."""

_DPI = 120


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve: false and true positive rates at every distinct threshold.

    Attributes:
        name: the positive class.
        fpr: false positive rate, from 0 up to 1. Shape: (T + 1,).
        tpr: true positive rate, same thresholds. Shape: (T + 1,).
        auc: area under the curve (trapezoidal rule; the ROC AUC).
    """

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence in equal-width bins, as the ECE measures it.

    Bin m holds the images with confidence cᵢ = maxₖ pᵢₖ in ((m−1)/M, m/M] (the first also
    cᵢ = 0). ECE = Σₘ |Bₘ|/n · |accuracyₘ − confidenceₘ|.

    Attributes:
        edges: bin edges 0, 1/M, ..., 1. Shape: (M + 1,).
        counts: images per bin. Shape: (M,).
        confidence: mean confidence per bin (NaN for empty bins). Shape: (M,).
        accuracy: fraction of correct predictions per bin (NaN for empty bins). Shape: (M,).
        ece: the expected calibration error.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def _probabilities(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits).detach().double().cpu(), 1).numpy()


def _names(k: int, class_names: Sequence[str] | None) -> list[str]:
    return [str(n) for n in class_names] if class_names else [f"class {i}" for i in range(k)]


def roc_curve_of(scores: np.ndarray, positive: np.ndarray, name: str) -> RocCurve:
    """The ROC curve of ``scores`` for the binary target ``positive``.

    Thresholds are the distinct scores, from the highest down; tied scores move the curve in
    one diagonal step. The first point is (0, 0), the last (1, 1).

    Shape:
        scores: (n,). positive: (n,) bool, with at least one positive and one negative.
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError(f"the ROC curve of {name!r} needs positives and negatives")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores, hits = np.asarray(scores)[order], positive[order]
    last_of_group = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tps = np.cumsum(hits)[last_of_group]
    fps = np.cumsum(~hits)[last_of_group]
    tpr = np.r_[0.0, tps / hits.sum()]
    fpr = np.r_[0.0, fps / (~hits).sum()]
    return RocCurve(name, fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)))


def roc_curves(
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
) -> list[RocCurve]:
    """ROC curves as MedMNIST's AUC scores them: p[:, 1] for two classes, else one-vs-rest
    p[:, c] against ``labels == c`` for each class c. Classes with no positive or no negative
    image are left out (their curve does not exist).

    Shape:
        logits: (n, k). labels: (n,).
    """
    probs = _probabilities(logits)
    y = torch.as_tensor(labels).reshape(-1).cpu().numpy()
    names = _names(probs.shape[1], class_names)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    return [
        roc_curve_of(probs[:, c], y == c, names[c])
        for c in classes
        if (y == c).any() and not (y == c).all()
    ]


def reliability_bins(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n_bins: int = ECE_BINS
) -> ReliabilityBins:
    """Per-bin confidence and accuracy of the top label (see :class:`ReliabilityBins`).

    Shape:
        logits: (n, k). labels: (n,).
    """
    probs = _probabilities(logits)
    y = torch.as_tensor(labels).reshape(-1).cpu().numpy()
    confidence, correct = probs.max(1), (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, confidence, n_bins) / counts
        accuracy = np.bincount(bins, correct, n_bins) / counts
    gaps = np.where(counts > 0, np.abs(accuracy - mean_conf) * counts, 0.0)
    return ReliabilityBins(edges, counts, mean_conf, accuracy, float(gaps.sum() / len(y)))


def confusion_counts(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
) -> np.ndarray:
    """Confusion matrix: entry (i, j) counts images of true class i predicted as class j.

    Shape:
        logits: (n, k). labels: (n,). output: (k, k) int64.
    """
    probs = _probabilities(logits)
    k = probs.shape[1]
    y = torch.as_tensor(labels).reshape(-1).cpu().numpy().astype(np.int64)
    return np.bincount(y * k + probs.argmax(1), minlength=k * k).reshape(k, k)


def plot_roc(curves: Sequence[RocCurve], path: str | Path, title: str = "ROC") -> None:
    """Write ``roc.png``: each curve with its AUC in the legend, and the chance diagonal."""
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    for colour, curve in zip(_colours(len(curves)), curves, strict=True):
        ax.plot(curve.fpr, curve.tpr, color=colour, label=f"{curve.name} (AUC = {curve.auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    one_vs_rest = " (one vs rest)" if len(curves) > 1 else ""
    ax.set(
        title=title + one_vs_rest,
        xlabel="false positive rate (1 − specificity)",
        ylabel="true positive rate (sensitivity)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
    )
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=_DPI)


def plot_calibration(bins: ReliabilityBins, path: str | Path, title: str = "Calibration") -> None:
    """Write ``calibration.png``: accuracy per confidence bin against the diagonal, the ECE in
    the title, and below it how many images fall in each bin."""
    fig = Figure(figsize=(5.2, 6.0), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = np.diff(bins.edges)
    filled = bins.counts > 0
    ax.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
           edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")  # fmt: skip
    ax.bar(bins.edges[:-1][filled], (bins.confidence - bins.accuracy)[filled],
           bottom=bins.accuracy[filled], width=width[filled], align="edge", color="tab:red",
           alpha=0.3, hatch="//", label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set(title=f"{title}: ECE = {bins.ece:.3f} ({len(bins.counts)} bins)",
           ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar(bins.edges[:-1], bins.counts, width=width, align="edge", color="0.5")
    hist.set(xlabel="confidence (top-class probability)", ylabel="images")
    fig.savefig(path, dpi=_DPI)


def plot_confusion(
    matrix: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion matrix",
) -> None:
    """Write ``confusion.png``: counts (rows: true class, columns: predicted) in every cell."""
    k = len(matrix)
    names = _names(k, class_names)
    side = max(4.0, 0.7 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="images")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour)
    ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set(title=f"{title} (n = {int(matrix.sum())})", xlabel="predicted", ylabel="true")
    fig.savefig(path, dpi=_DPI)


def write_clinical_figures(
    folder: str | Path,
    logits: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    split: str = "test",
) -> dict[str, Path]:
    """Write ``roc.png``, ``calibration.png`` and ``confusion.png`` of one split to ``folder``.

    ``roc.png`` is left out when no class has both positives and negatives.

    Shape:
        logits: (n, k). labels: (n,).

    Returns:
        figure name (``roc``, ``calibration``, ``confusion``) → the file written.
    """
    folder = Path(folder)
    written: dict[str, Path] = {}
    curves = roc_curves(logits, labels, class_names)
    if curves:
        written["roc"] = folder / "roc.png"
        plot_roc(curves, written["roc"], title=f"ROC, {split}")
    written["calibration"] = folder / "calibration.png"
    plot_calibration(reliability_bins(logits, labels), written["calibration"], f"{split} split")
    written["confusion"] = folder / "confusion.png"
    plot_confusion(confusion_counts(logits, labels), written["confusion"], class_names,
                   title=f"Confusion matrix, {split}")  # fmt: skip
    return written
