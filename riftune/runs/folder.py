"""The files of one run folder, the rules for starting, resuming or replacing a run there, and
the lock that keeps a second writer out of it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from riftune.errors import UserError


@dataclass(frozen=True)
class RunDir:
    """Paths inside ``--out``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def steps(self) -> Path:
        return self.root / "steps.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def training_plot(self) -> Path:
        return self.root / "training.png"

    @property
    def embeddings_plot(self) -> Path:
        return self.root / "embeddings.png"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def roc_plot(self) -> Path:
        return self.root / "roc.png"

    @property
    def calibration_plot(self) -> Path:
        return self.root / "calibration.png"

    @property
    def confusion_plot(self) -> Path:
        return self.root / "confusion.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    def outputs(self) -> list[Path]:
        """Everything a run writes, so ``--overwrite`` removes exactly that and nothing else."""
        return [
            self.config,
            self.metrics,
            self.history,
            self.steps,
            self.checkpoints,
            self.training_plot,
            self.embeddings_plot,
            self.predictions,
            self.roc_plot,
            self.calibration_plot,
            self.confusion_plot,
            self.tensorboard,
            self.wandb,
            self.mlruns,
        ]

    def is_finished(self) -> bool:
        return self.metrics.is_file()

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())


def check_claim(run: RunDir, resume: bool, overwrite: bool) -> None:
    """Whether a run may start in ``run``, without touching it (UserError if not).

    A finished run is never replaced without ``--overwrite``; an unfinished one needs
    ``--resume`` or ``--overwrite``; ``--resume`` needs a checkpoint; ``--out`` must not be a
    file.
    """
    if run.root.exists() and not run.root.is_dir():
        raise UserError(f"--out {run.root} is a file, not a run folder; choose another --out")
    if resume:
        if run.is_finished():
            raise UserError(
                f"{run.root} holds a finished run; nothing to resume (pass --overwrite to "
                "run it again)"
            )
        if not run.has_checkpoints():
            raise UserError(
                f"--resume given but {run.checkpoints} holds no checkpoint; "
                "drop --resume to start a new run there"
            )
    elif not overwrite:
        if run.is_finished():
            raise UserError(
                f"{run.root} already holds a finished run; pass --overwrite to replace it "
                "or choose another --out"
            )
        if run.has_checkpoints() or run.config.exists():
            raise UserError(
                f"{run.root} holds an unfinished run; pass --resume to continue it "
                "or --overwrite to start again"
            )


def claim(run: RunDir, resume: bool, overwrite: bool) -> None:
    """:func:`check_claim`, then prepare the folder (rank 0 only, holding :func:`run_lock`):
    ``--overwrite`` removes only the files a run writes."""
    check_claim(run, resume, overwrite)
    if resume:
        return
    if overwrite:
        for path in run.outputs():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run.checkpoints.mkdir(parents=True, exist_ok=True)


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file.

    The text is serialized before anything touches the disk, written to a hidden temporary
    file in the same folder, fsynced and renamed onto ``path``. If writing fails (a full disk,
    a quota, an I/O error) the temporary file is removed and ``path`` keeps its previous
    content.

    Raises:
        UserError: The write failed; the message names the file and the system's reason.
    """
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(
            f"cannot write {path} ({err.strerror or err}); its previous content is unchanged; "
            "free space or fix the folder, then rerun"
        ) from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# ------------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run folder's lock, as recorded in ``<run>/.lock``."""

    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> LockHolder | None:
    """The holder recorded in the open lock file, or None if it is empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        record = json.loads(raw.decode("utf-8"))
        return LockHolder(int(record["pid"]), str(record["host"]), str(record["started"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


_NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


@contextlib.contextmanager
def run_lock(run: RunDir) -> Iterator[LockHolder]:
    """Hold the exclusive writer's lock of ``run`` for the ``with`` block.

    The lock is ``fcntl.flock`` on ``<run>/.lock``, which holds ``{"pid", "host", "started"}``
    of its holder while held and is emptied on release (the file itself stays, so two
    processes never lock two different files of the same name). The kernel drops a flock
    when its process dies, even by SIGKILL, so on one host a dead holder never blocks a new
    run: a record left by a process of this host whose flock is gone is stale and taken over
    (whatever its PID, which may have been reused). The record covers what flock cannot see:
    a record left by another host is refused (flock may be local to each client of a network
    file system, and a process elsewhere cannot be probed); on a file system without flock
    the record alone decides, and a holder of this host counts as alive while its PID is.
    Take it on rank 0 only, before :func:`claim`.

    Yields:
        This process's own record.

    Raises:
        UserError: Another process holds the lock; the message names it (pid, host, since).
    """
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise _held_error(run, _read_holder(fd)) from None
            if err.errno not in _NO_FLOCK:
                raise
            flocked = False
        recorded = _read_holder(fd)
        host = socket.gethostname()
        if recorded is not None and recorded.pid != os.getpid():
            elsewhere = recorded.host != host
            if elsewhere or (not flocked and _pid_alive(recorded.pid)):
                if flocked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                raise _held_error(run, recorded, elsewhere=elsewhere)
        me = LockHolder(os.getpid(), host, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode("utf-8"), 0)
        os.fsync(fd)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)
            if flocked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _held_error(run: RunDir, holder: LockHolder | None, elsewhere: bool = False) -> UserError:
    who = holder.describe() if holder else "a process that is starting"
    if elsewhere:
        return UserError(
            f"{run.root} is being written by {who}; if that process has ended, delete "
            f"{run.lock} and run again"
        )
    return UserError(
        f"{run.root} is being written by {who}; wait for it to finish or stop it, "
        "or choose another --out"
    )
