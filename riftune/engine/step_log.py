"""The rows of steps.csv, read back from the device in chunks rather than step by step.

A training step returns its losses (and, under a similarity budget, λ's columns) as scalar
tensors where training runs. Reading each back as it comes would make the host wait for the
device at every step; :class:`StepLog` keeps the rows as they came and :meth:`StepLog.flush`
reads all pending ones back in one transfer: every ``every`` steps, and whenever the loop needs
them complete (before a checkpoint, a stop, at an epoch's end). The file still gets one row per
step with the same columns and values, and a checkpoint always holds every row up to its step.

Flushing is also where a diverged run is caught: the first row whose loss is not finite stops
the run with :class:`~riftune.engine.step.NonFiniteLossError`, after the rows before it are
written, and before any checkpoint could hold the diverged weights.
"""

from __future__ import annotations

import math

import torch

from riftune.engine.checkpointer import TrainState
from riftune.engine.outputs import LiveOutputs
from riftune.engine.step import NonFiniteLossError

#: steps between two reads of the pending rows (one host-device synchronisation each)
FLUSH_EVERY = 32

#: the losses an epoch's means in history.csv are taken over
LOSSES = ("loss", "task", "reg")


class StepLog:
    """Pending step rows, written to the run's state and steps.csv when flushed.

    Args:
        state: the run's state: each flushed row is appended to ``state.steps`` and its losses
            added to ``state.epoch_sums``.
        outputs: where rows go live (steps.csv and the trackers).
        every: flush after this many pending rows (:meth:`add` says when).
    """

    def __init__(self, state: TrainState, outputs: LiveOutputs, every: int = FLUSH_EVERY):
        self.state = state
        self.outputs = outputs
        self.every = every
        self.pending: list[dict] = []

    def add(self, row: dict) -> bool:
        """Keep one step's row (its values tensors or numbers); returns whether a flush is due."""
        self.pending.append(row)
        return len(self.pending) >= self.every

    def flush(self) -> dict | None:
        """Read the pending rows back (one transfer), write them, and return the last one.

        Returns:
            The last row written, as numbers, or None when nothing was pending.

        Raises:
            NonFiniteLossError: a row's loss is NaN or infinite; the rows before it are written.
        """
        rows, self.pending = _as_numbers(self.pending), []
        diverged = next((row for row in rows if not math.isfinite(row["loss"])), None)
        if diverged is not None:
            rows = rows[: rows.index(diverged)]
        for row in rows:
            self.state.steps.append(row)
            for key in LOSSES:
                self.state.epoch_sums[key] += row[key]
        if rows:
            self.outputs.steps(rows)
        if diverged is not None:
            raise NonFiniteLossError(f"loss became non-finite at step {diverged['step']}")
        return rows[-1] if rows else None


def _as_numbers(rows: list[dict]) -> list[dict]:
    """The rows with every tensor value replaced by its float, read in one transfer (float64,
    so float32 losses and float64 λ keep their exact values)."""
    places = [
        (i, key) for i, row in enumerate(rows) for key, v in row.items() if torch.is_tensor(v)
    ]
    if not places:
        return [dict(row) for row in rows]
    values = torch.stack([rows[i][key].detach().double() for i, key in places]).tolist()
    numbers = [dict(row) for row in rows]
    for (i, key), value in zip(places, values, strict=True):
        numbers[i][key] = value
    return numbers
