"""Optional experiment loggers that a run writes to as it trains (TensorBoard)."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from pathlib import Path

from riftune.errors import UserError


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (``tensorboard --logdir log_dir``).

    ``torch.utils.tensorboard`` is imported when the logger is created, so riftune runs
    without the ``tensorboard`` package unless a logger is asked for.

    Resume-safe: a crashed run may have logged steps after its last checkpoint. Reopen with
    ``purge_step = G + 1``, G the checkpoint's global step, and TensorBoard drops the events of
    steps ≥ G + 1 written before the crash, so the replayed steps are not shown twice.

    Args:
        log_dir: folder of the event files (created if missing).
        purge_step: hide earlier events at this step and later (``None``: a new run).

    Raises:
        UserError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "TensorBoard logging needs the tensorboard package: pip install riftune[tensorboard]"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        """Log every real number of ``scalars`` at ``step`` (tags as given, e.g. ``train/loss``);
        other values (strings, ``None``, bools) are skipped. Flushed, so TensorBoard shows them
        at once."""
        for tag, value in scalars.items():
            if isinstance(value, Real) and not isinstance(value, bool):
                self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
