"""The per-image and clinical outputs of a run's evaluation: ``predictions.csv``, ``roc.png``,
``calibration.png``, ``confusion.png``, and the bootstrap intervals for ``metrics.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from riftune.metrics.bootstrap import RESAMPLES, bootstrap_ci
from riftune.metrics.embeddings import Collected
from riftune.report.clinical import write_clinical_figures
from riftune.report.predictions import write_split_predictions


def confidence_intervals(
    splits: Mapping[str, Collected], seed: int, resamples: int = RESAMPLES
) -> dict[str, dict]:
    """Split name → :func:`~riftune.metrics.bootstrap.bootstrap_ci` of its logits and labels
    (95%, percentile, stratified, seeded with ``seed``)."""
    return {
        name: bootstrap_ci(split.logits, split.labels, resamples=resamples, seed=seed)
        for name, split in splits.items()
    }


def write_clinical_outputs(
    folder: str | Path,
    splits: Mapping[str, Collected],
    class_names: Sequence[str] | None,
    figures_split: str = "test",
) -> list[Path]:
    """Write ``predictions.csv`` (a row per image of every split given, in that order) and the
    three figures of ``figures_split`` into ``folder``; returns the files written."""
    folder = Path(folder)
    write_split_predictions(
        folder / "predictions.csv",
        {name: (s.logits, s.labels, s.indices) for name, s in splits.items()},
        class_names,
    )
    chosen = splits[figures_split]
    figures = write_clinical_figures(
        folder, chosen.logits, chosen.labels, class_names, split=figures_split
    )
    return [folder / "predictions.csv", *figures.values()]
