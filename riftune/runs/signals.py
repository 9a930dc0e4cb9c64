"""Stop a run cleanly on SIGTERM or SIGINT: finish the step, checkpoint, exit with a status.

SLURM, Kubernetes and spot machines send SIGTERM some seconds before they kill; Ctrl-C sends
SIGINT. Inside :class:`GracefulStop` either signal only sets a flag; the training loop asks
:meth:`GracefulStop.should_stop` at each step boundary, writes a checkpoint and exits with
:data:`PREEMPTED_EXIT`. A second SIGINT acts as it would without the handler (it raises
KeyboardInterrupt), for a user at a terminal who does not want to wait for the step. Further
SIGTERMs change nothing: a cluster may deliver the same stop several times (SLURM signals
every process of a job, and a launcher forwards it too); SIGKILL is the way to stop at once.

Under torchrun the signal may reach one rank only, or the ranks at different steps; the
flag is all-reduced with MAX in :meth:`GracefulStop.should_stop`, so every rank stops after
the same step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import torch
import torch.distributed as dist

from riftune.distributed import DistributedContext

PREEMPTED_EXIT = 75
"""Exit status of a run stopped by a signal after writing its checkpoint: ``EX_TEMPFAIL`` of
sysexits.h ("try again later"), apart from 0 (done), 1 (a crash), 2 (a usage error) and the
shell's 128 + N of a process killed by signal N (130, 143), which means no checkpoint was
written. A SLURM or Kubernetes wrapper can requeue on 75 and rerun with ``--resume``."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_message(signal_name: str, step: int, checkpoint: os.PathLike | str) -> str:
    """The one line a run prints when it stops on a signal."""
    return (
        f"stopped by {signal_name} after step {step}; checkpoint {checkpoint} written; "
        "rerun the same command with --resume to continue"
    )


class Preempted(Exception):
    """Raised by a run that stopped on a signal after writing its checkpoint.

    ``str()`` is :func:`stop_message`; a command line prints it and exits with
    :data:`PREEMPTED_EXIT`.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: os.PathLike | str) -> None:
        super().__init__(stop_message(signal_name, step, checkpoint))
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class GracefulStop:
    """Turn SIGTERM and SIGINT into a flag for the ``with`` block; restore the old handlers after.

    Handlers can only be installed from the main thread; elsewhere the block installs nothing
    and the flag stays down (the caller's signals behave as before).

    Args:
        signals: The signals to catch.
        on_signal: Called with the signal number on every signal caught, before anything else
            (a launcher forwards it to its workers).

    Attributes:
        received: The number of the first stop signal this process got, 0 while none.
        agreed: The signal all ranks agreed to stop on at the last :meth:`should_stop`, 0 while
            none (the largest signal number any rank had received).
    """

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        self.signals = signals
        self.on_signal = on_signal
        self.received = 0
        self.agreed = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether this process got a stop signal."""
        return self.received != 0

    @property
    def signal_name(self) -> str | None:
        """Name of the signal the run stops on (``"SIGTERM"``), from any rank; None if none."""
        number = self.agreed or self.received
        return signal.Signals(number).name if number else None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[int(signum)] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.on_signal is not None:
            self.on_signal(signum)
        if signum == signal.SIGINT == self.received:  # Ctrl-C again: interrupt at once
            previous = self._previous.pop(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            signal.raise_signal(signum)
            return
        self.received = self.received or signum

    def should_stop(self, ctx: DistributedContext) -> bool:
        """Whether any rank got a stop signal; call it on every rank at every step boundary.

        ``agreed = max_r received_r``: one all-reduce (MAX) of one integer when distributed, so
        all ranks get the same answer after the same step (and know the signal). In a world of
        one it only reads the flag.
        """
        value = self.received
        if ctx.is_distributed:
            flag = torch.tensor([value], device=ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            value = int(flag.item())
        self.agreed = value
        return value != 0
