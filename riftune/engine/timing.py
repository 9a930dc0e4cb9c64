"""Wall time per phase of a run (reference pass, training steps, evaluation, ...).

Example::

    timer = PhaseTimer()
    with timer.phase("train_steps"):
        ...
    metrics["timing"] = timer.as_dict()
    print(timer.summary())

Phases accumulate: entering ``train_steps`` once per epoch adds up the epochs. A phase
entered inside another is counted in both (the outer one's time includes it). The totals travel
through a checkpoint (:meth:`PhaseTimer.state_dict`, :meth:`PhaseTimer.load_state_dict`), so a
resumed run reports the time of all its attempts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

PHASES = (
    "reference_pass",
    "regularizer_setup",
    "train_steps",
    "validation",
    "test_eval",
    "sharpness",
    "hessian",
    "robustness",
    "transfer",
    "figures",
    "checkpointing",
)
"""The phase names ``riftune finetune`` uses, in the order its summary lists them."""


class PhaseTimer:
    """Accumulates wall seconds (``time.perf_counter``) per phase name.

    Args:
        clock: seconds as a float; ``time.perf_counter`` unless a test gives another.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` body under ``name`` (added to earlier time of that name).

        The time counts even when the body raises.
        """
        if not name:
            raise ValueError("a phase needs a non-empty name")
        start = self._clock()
        try:
            yield
        finally:
            self.add(name, self._clock() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` (>= 0) of wall time to phase ``name``, as one call."""
        if seconds < 0:
            raise ValueError(f"phase {name!r}: seconds must be >= 0; got {seconds}")
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds
        self._calls[name] = self._calls.get(name, 0) + 1

    def seconds(self, name: str) -> float:
        """The accumulated seconds of ``name`` (0.0 if never entered)."""
        return self._seconds.get(name, 0.0)

    def _ordered(self) -> list[str]:
        known = [name for name in PHASES if name in self._seconds]
        return known + sorted(set(self._seconds) - set(PHASES))

    def as_dict(self) -> dict[str, float]:
        """``{phase: seconds}`` for ``metrics.json``, known phases first, then the others sorted."""
        return {name: self._seconds[name] for name in self._ordered()}

    def summary(self, total: float | None = None) -> str:
        """A Markdown table: phase, seconds, calls, and the share of ``total`` when given.

        Args:
            total: the run's wall seconds; adds a ``share`` column (seconds / total) and an
                ``other`` row for the time outside every phase (when positive).
        """
        header = "| phase | seconds | calls |" + (" share |" if total else "")
        lines = [header, "|---|---:|---:|" + ("---:|" if total else "")]
        for name in self._ordered():
            row = f"| {name} | {self._seconds[name]:.1f} | {self._calls[name]} |"
            lines.append(row + (f" {self._seconds[name] / total:.0%} |" if total else ""))
        if total:
            other = total - sum(self._seconds.values())
            if other > 0:
                lines.append(f"| other | {other:.1f} | | {other / total:.0%} |")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, dict[str, float] | dict[str, int]]:
        """The totals, as plain dicts (for a checkpoint's metadata)."""
        return {"seconds": dict(self._seconds), "calls": dict(self._calls)}

    def load_state_dict(self, state: dict) -> None:
        """Replace the totals by those of :meth:`state_dict`; later phases add to them."""
        self._seconds = {str(k): float(v) for k, v in state["seconds"].items()}
        self._calls = {str(k): int(v) for k, v in state["calls"].items()}
