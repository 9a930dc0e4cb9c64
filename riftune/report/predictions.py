"""Per-image predictions as a CSV file (``predictions.csv``), written and read back.

Columns: the key columns that say which image a row is (``split`` and ``index`` for a run's
own splits: the image's position in that split, as in the MedMNIST arrays or the file list;
``file`` or ``index`` for new images), ``label`` (the true class index, when known),
``predicted`` (the arg-max class index) and one probability column per class,
``p_<class name>``, in class-index order (``p_0``, ``p_1``, ... when the classes have no
names). Probabilities are the softmax of the logits, written with ``repr`` precision.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

PROB_PREFIX = "p_"


def probability_columns(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """``p_<name>`` for each class, ``p_<index>`` without names."""
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return [PROB_PREFIX + name for name in names]


def write_predictions_csv(
    path: str | Path,
    logits: torch.Tensor | np.ndarray,
    keys: Mapping[str, Sequence[object]],
    class_names: Sequence[str] | None = None,
    labels: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Write one row per image: key columns, ``label``, ``predicted``, ``p_<class>``.

    Args:
        path: the CSV file (overwritten); its folder must exist.
        logits: the model's class scores; p = softmax(logits) is written.
        keys: the leading columns, each one value per image, e.g.
            ``{"split": [...], "index": [...]}`` or ``{"file": [...]}``.
        class_names: the name of each class index (``None``: the indices).
        labels: the true class indices, or ``None`` for images without labels (no column).

    Shape:
        logits: (n, k). labels: (n,). every key column: n values.
    """
    probs = torch.softmax(torch.as_tensor(logits).detach().double().cpu(), 1).numpy()
    n, k = probs.shape
    columns = dict(keys)
    if labels is not None:
        columns["label"] = torch.as_tensor(labels).reshape(-1).tolist()
    columns["predicted"] = probs.argmax(1).tolist()
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} images")
    prob_names = probability_columns(k, class_names)
    clash = set(prob_names) & set(columns)
    if clash:
        raise ValueError(f"class names give columns that already exist: {sorted(clash)}")
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, *prob_names])
        for i, row in enumerate(probs.tolist()):
            writer.writerow([*(values[i] for values in columns.values()), *map(repr, row)])


def write_split_predictions(
    path: str | Path,
    splits: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    class_names: Sequence[str] | None = None,
) -> None:
    """``predictions.csv`` of a run: ``split``, ``index``, ``label``, ``predicted``, ``p_*``.

    Args:
        path: the CSV file (overwritten).
        splits: split name → ``(logits, labels, indices)`` of that split, e.g. from
            :class:`riftune.metrics.Collected` (``logits``, ``labels``, ``indices``); rows
            follow the order given (e.g. ``{"test": ..., "val": ...}``).
        class_names: the dataset's class names.

    Shape:
        logits: (n, k). labels and indices: (n,).
    """
    logits = torch.cat([torch.as_tensor(s[0]).detach().cpu().double() for s in splits.values()])
    labels = torch.cat([torch.as_tensor(s[1]).reshape(-1).cpu() for s in splits.values()])
    keys = {
        "split": [name for name, s in splits.items() for _ in range(len(s[0]))],
        "index": torch.cat([torch.as_tensor(s[2]).reshape(-1).cpu() for s in splits.values()])
        .long()
        .tolist(),
    }
    write_predictions_csv(path, logits, keys, class_names, labels)


def read_predictions_csv(path: str | Path) -> list[dict[str, int | float | str]]:
    """Rows of a predictions CSV: ``index``/``label``/``predicted`` as int, ``p_*`` as float."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [
            {key: _parse(key, value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _parse(key: str, value: str) -> int | float | str:
    if key.startswith(PROB_PREFIX):
        return float(value)
    if key in ("index", "label", "predicted"):
        return int(value)
    return value
