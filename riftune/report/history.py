"""Per-epoch training history as a CSV file (``history.csv``), written and read back.

A history is a list of one dict per epoch (``{"epoch": 1, "train_loss": 0.61, ...}``). The file's
columns are the union of the keys in first-seen order; a key missing from an epoch is an empty
cell, and an empty cell is a missing key when read back. :class:`AppendingCSV` writes the same
file row by row while training runs (``history.csv``, ``steps.csv``), resume-safe.
"""

from __future__ import annotations

import csv
import os
import tempfile
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


class AppendingCSV:
    """A history CSV that grows by rows (:meth:`append`, :meth:`extend`), readable at any time.

    The file always holds exactly the rows given so far, in the format of
    :func:`write_history_csv`: the header once, one line per row, flushed and closed after each
    append or extend, so another process (or ``tail -f``) sees every finished row. A row with a key the
    header lacks rewrites the file once with the widened header (atomically, through a
    temporary file and a rename); otherwise a row is appended, and earlier bytes are never
    touched.

    Resume-safe: a crashed run may have appended rows after its last checkpoint. Reopen the
    file with the rows the checkpoint holds, ``AppendingCSV(path, rows=state.history)``, and the
    file is cut back to exactly those rows (rewritten) before training appends the rest, so no
    row is duplicated or lost.

    Args:
        path: the CSV file; its folder must exist.
        rows: the rows the file must hold now (``()`` for a new run: the file is removed until
            the first append).
    """

    def __init__(self, path: str | Path, rows: Sequence[Mapping[str, object]] = ()):
        self.path = Path(path)
        self.sync(rows)

    @property
    def rows(self) -> list[dict[str, object]]:
        """The rows the file holds (copies)."""
        return [dict(row) for row in self._rows]

    def sync(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Make the file hold exactly ``rows`` (rewritten atomically; removed when empty)."""
        self._rows = [dict(row) for row in rows]
        self._columns = history_columns(self._rows)
        if not self._rows:
            self.path.unlink(missing_ok=True)
            return
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        os.close(fd)
        try:
            write_history_csv(self._rows, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def append(self, row: Mapping[str, object]) -> None:
        """Add one row at the end of the file (the header first, if the file is new)."""
        self.extend([row])

    def extend(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Add rows at the end of the file in one write (the header first, if the file is new)."""
        rows = [dict(row) for row in rows]
        if any(key not in self._columns for row in rows for key in row):
            self.sync([*self._rows, *rows])
            return
        self._rows.extend(rows)
        new_file = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns, restval="")
            if new_file:
                writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


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
