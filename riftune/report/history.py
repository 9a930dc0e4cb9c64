"""Per-epoch training history as a CSV file (``history.csv``), written and read back.

A history is a list of one dict per epoch (``{"epoch": 1, "train_loss": 0.61, ...}``). The file's
columns are the union of the keys in first-seen order; a key missing from an epoch is an empty
cell, and an empty cell is a missing key when read back.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path


def history_columns(history: Sequence[Mapping[str, object]]) -> list[str]:
    """The union of the keys of all rows, in first-seen order."""
    columns: dict[str, None] = {}
    for row in history:
        columns.update(dict.fromkeys(row))
    return list(columns)


def write_history_csv(history: Sequence[Mapping[str, object]], path: str | Path) -> None:
    """Write a per-epoch history to ``path`` (overwritten), one row per epoch.

    Floats are written with ``repr`` precision, so :func:`read_history_csv` gives them back
    exactly; ``None`` and missing keys become empty cells.

    Args:
        history: one mapping per epoch, e.g. ``{"epoch": 1, "train_loss": 0.6, "val_auc": 0.8}``.
        path: the CSV file to write; its folder must exist.
    """
    columns = history_columns(history)
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in history:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def read_history_csv(path: str | Path) -> list[dict[str, int | float | str]]:
    """Read a history written by :func:`write_history_csv`.

    Each cell becomes an ``int`` if it parses as one, else a ``float`` if it parses as one
    (``nan`` and ``inf`` included), else stays a string; empty cells are left out of their row.

    Args:
        path: the CSV file.

    Returns:
        One dict per epoch, in file order.
    """
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [
            {key: _parse(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(handle)
        ]


def _parse(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text
