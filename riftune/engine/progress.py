"""Progress output: tqdm bars on a terminal, plain log lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Bar:
    def __init__(self, bar: tqdm | None):
        self._bar = bar

    def update(self, **postfix: float) -> None:
        """One step done; ``postfix`` (numbers already on the host) replaces the shown values."""
        if self._bar is not None:
            if postfix:
                self.show(**postfix)
            self._bar.update(1)

    def show(self, **postfix: float) -> None:
        """Show these values beside the bar (from the next refresh)."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Progress:
    """Where a run reports: ``enabled=False`` on other ranks than 0 and with ``--quiet``."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interactive = enabled and self.stream.isatty()

    def log(self, message: str) -> None:
        if self.enabled:
            if self.interactive:
                tqdm.write(message, file=self.stream)
            else:
                print(message, file=self.stream, flush=True)

    def bar(self, total: int, initial: int = 0, desc: str = "", leave: bool = False) -> _Bar:
        """A progress bar on a terminal; elsewhere nothing (epoch lines are logged instead)."""
        if not self.interactive:
            return _Bar(None)
        return _Bar(tqdm(total=total, initial=initial, desc=desc, file=self.stream, leave=leave))
