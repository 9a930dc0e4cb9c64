"""Run a grid's ``riftune finetune`` jobs: local processes, or SLURM jobs through submitit.

A :class:`GridJob` is a command plus the run folder it writes. Every job is idempotent, by
the rule :func:`again_flags` applies to the folder before it starts: a finished run
(``metrics.json``) is skipped, an interrupted one (a checkpoint) continues with ``--resume``,
one that failed before its first checkpoint starts again with ``--overwrite``. So a grid
stopped anywhere, by a signal, a time limit or a crash, continues where it stopped when it
is launched again, and its results are the run folders, gathered the same way whichever
launcher ran them.

- :class:`LocalLauncher` runs ``jobs`` processes at once on this machine. SIGTERM or SIGINT
  sent to the launcher is forwarded once to every running job (which checkpoints and exits
  with :data:`riftune.runs.signals.PREEMPTED_EXIT`) and no further job starts. Jobs run in their
  own sessions, so a Ctrl-C in the terminal reaches them only through the launcher, once.
- :class:`SlurmLauncher` submits the jobs as one SLURM job array through submitit
  (``pip install riftune[slurm]``) and waits for them. Each array task runs the job as a
  child process (which ignores SIGUSR2). When submitit signals the task that its time is
  nearly up or that it is preempted (SIGUSR2, ``signal_delay_s`` = 90 s before the limit by
  default), the task sends SIGTERM to the child, waits up to ``stop_grace_s`` for it to
  checkpoint and exit, and has submitit requeue it; the requeued task resumes the run.

Ray was considered instead of submitit: it needs a Ray cluster started on the machines
first, while submitit talks to the SLURM controller most clusters already run and needs
nothing but ``sbatch`` (and runs the same code locally, for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from riftune.errors import UserError
from riftune.runs.folder import RunDir
from riftune.runs.signals import PREEMPTED_EXIT, GracefulStop

LOG_NAME = "compare.log"
"""Each job's output is appended to ``<run>/compare.log``."""

Status = Literal["skipped", "done", "stopped", "failed", "not started"]


@dataclass(frozen=True)
class GridJob:
    """One run of a grid: the command (without ``--resume`` / ``--overwrite``) and its folder.

    Attributes:
        argv: The full command, e.g. ``[sys.executable, "-m", "riftune", "finetune", ...,
            "--out", str(folder)]``.
        folder: The run folder the command writes (its ``--out``).
    """

    argv: tuple[str, ...]
    folder: Path


@dataclass(frozen=True)
class JobResult:
    """What became of a job: ``skipped`` (already finished), ``done``, ``stopped`` (exited with
    PREEMPTED_EXIT after a checkpoint), ``failed`` or ``not started`` (the grid was stopped)."""

    job: GridJob
    status: Status
    returncode: int | None = None


@dataclass
class LaunchOutcome:
    """The results in the order of the jobs, and the signal that stopped the grid, if any."""

    results: list[JobResult]
    stopped_by: str | None = None


class Launcher(Protocol):
    """Runs a list of grid jobs and reports what became of each."""

    def run(self, jobs: Sequence[GridJob], log: Callable[[str], None]) -> LaunchOutcome: ...


def again_flags(run: RunDir) -> list[str]:
    """The flags that make a job idempotent: ``--resume`` if ``run`` holds a checkpoint,
    ``--overwrite`` if it holds a run that failed before its first one, else none."""
    if run.has_checkpoints():
        return ["--resume"]
    if run.config.exists():
        return ["--overwrite"]
    return []


def _status(returncode: int) -> Status:
    if returncode == 0:
        return "done"
    return "stopped" if returncode == PREEMPTED_EXIT else "failed"


def _describe(result: JobResult) -> str:
    code = f" (exit {result.returncode})" if result.status == "failed" else ""
    return f"{result.status}{code}: {result.job.folder}"


class SlurmTask:
    """What each SLURM array task runs: one job, stopped and requeued when SLURM needs the node.

    submitit calls :meth:`checkpoint` (from its SIGUSR2 handler, in the task's main thread)
    before the time limit or on preemption; the returned submission is requeued.

    Args:
        stop_grace_s: How long :meth:`checkpoint` waits for the run to checkpoint and exit
            after its SIGTERM (keep it below submitit's ``signal_delay_s``).
    """

    def __init__(self, stop_grace_s: float = 80.0) -> None:
        self.stop_grace_s = stop_grace_s
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"stop_grace_s": self.stop_grace_s, "_process": None}

    def __call__(self, job: GridJob) -> JobResult:
        process = _start(job, ignore=(int(signal.SIGUSR2),))  # SLURM sends it to the child too
        if process is None:
            return JobResult(job, "skipped")
        self._process = process
        # poll rather than wait(): checkpoint() must be able to reap the child from the handler
        while process.poll() is None:
            time.sleep(0.2)
        return JobResult(job, _status(process.returncode), process.returncode)

    def checkpoint(self, job: GridJob) -> Any:
        """Stop the run at its next step (SIGTERM), wait for it, and ask to be requeued."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        return DelayedSubmission(SlurmTask(self.stop_grace_s), job)


def _start(
    job: GridJob, new_session: bool = False, ignore: Sequence[int] = ()
) -> subprocess.Popen | None:
    run = RunDir(job.folder)
    if run.is_finished():
        return None
    job.folder.mkdir(parents=True, exist_ok=True)
    with open(job.folder / LOG_NAME, "a") as handle:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [*job.argv, *again_flags(run)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=os.environ,
            start_new_session=new_session,
            preexec_fn=_ignoring(ignore) if ignore else None,
        )


def _ignoring(signals: Sequence[int]) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child ignore ``signals`` (inherited through exec)."""

    def ignore() -> None:
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)

    return ignore


class LocalLauncher:
    """``jobs`` grid jobs at once as processes on this machine, forwarding SIGTERM / SIGINT.

    Run it from the main thread for the forwarding (elsewhere signals are not caught).
    """

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1; got {jobs}")
        self.jobs = jobs

    def run(self, jobs: Sequence[GridJob], log: Callable[[str], None]) -> LaunchOutcome:
        """Run every job (skipping finished ones) until all end or a stop signal arrives."""
        live: set[subprocess.Popen] = set()
        guard = threading.Lock()
        stopping = threading.Event()

        def forward(signum: int) -> None:  # in the main thread, which never holds ``guard``
            stopping.set()
            with guard:
                for process in live:
                    process.send_signal(signum)

        def one(job: GridJob) -> JobResult:
            with guard:
                if stopping.is_set():
                    return JobResult(job, "not started")
                process = _start(job, new_session=True)
                if process is None:
                    return JobResult(job, "skipped")
                live.add(process)
            returncode = process.wait()
            with guard:
                live.discard(process)
            result = JobResult(job, _status(returncode), returncode)
            log(_describe(result))
            return result

        with GracefulStop(on_signal=forward) as stop:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                results = list(pool.map(one, jobs))
        return LaunchOutcome(results, stop.signal_name)


@dataclass
class SlurmLauncher:
    """The grid as one SLURM job array through submitit, one run per array task.

    Attributes:
        folder: Where submitit keeps its scripts and each task's logs (``%j`` is the job id).
        partition: The SLURM partition (``--partition``); None for the cluster's default.
        time_minutes: Time limit of each task (``--time``), in minutes.
        gpus_per_job: GPUs of each task (``--gpus-per-node``).
        cpus_per_task: CPU cores of each task (``--cpus-per-task``).
        array_parallelism: At most this many tasks of the array run at once (``--array=...%N``).
        stop_grace_s: How long a task waits for its run to checkpoint after submitit's
            pre-timeout or preemption signal (see :class:`SlurmTask`).
        extra: Further submitit parameters, e.g. ``{"slurm_mem_gb": 32}``.
        executor: A ready submitit executor (tests: ``submitit.AutoExecutor(folder,
            cluster="local")``); by default ``submitit.AutoExecutor(folder)``, which is SLURM
            where ``sbatch`` exists.
    """

    folder: Path
    partition: str | None = None
    time_minutes: int = 60
    gpus_per_job: int = 1
    cpus_per_task: int = 4
    array_parallelism: int = 16
    stop_grace_s: float = 80.0
    extra: dict[str, Any] = field(default_factory=dict)
    executor: Any = None

    def __post_init__(self) -> None:
        for name in ("time_minutes", "gpus_per_job", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"SLURM {name} must be an integer; got {value!r}")
        if isinstance(self.stop_grace_s, bool) or not isinstance(self.stop_grace_s, int | float):
            raise UserError(f"SLURM stop_grace_s must be a number; got {self.stop_grace_s!r}")
        if not isinstance(self.partition, str | None) or not isinstance(self.extra, dict):
            raise UserError("SLURM partition must be a name and extra a mapping of parameters")
        for name in ("time_minutes", "cpus_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise UserError(f"SLURM {name} must be at least 1; got {getattr(self, name)}")
        if self.gpus_per_job < 0:
            raise UserError(f"SLURM gpus_per_job must be 0 or more; got {self.gpus_per_job}")

    def parameters(self) -> dict[str, Any]:
        """The submitit parameters of every task."""
        params: dict[str, Any] = {
            "name": "riftune",
            "timeout_min": self.time_minutes,
            "gpus_per_node": self.gpus_per_job,
            "cpus_per_task": self.cpus_per_task,
            "tasks_per_node": 1,
            "nodes": 1,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        return {**params, **self.extra}

    def submit(self, jobs: Sequence[GridJob]) -> list[tuple[int, Any]]:
        """Submit the unfinished jobs as one array; returns (index in ``jobs``, submitit job)."""
        pending = [i for i, job in enumerate(jobs) if not RunDir(job.folder).is_finished()]
        if not pending:
            return []
        executor = self.executor or _auto_executor(self.folder)
        executor.update_parameters(**self.parameters())
        task = SlurmTask(self.stop_grace_s)
        return list(zip(pending, executor.map_array(task, [jobs[i] for i in pending]), strict=True))

    def run(self, jobs: Sequence[GridJob], log: Callable[[str], None]) -> LaunchOutcome:
        """Submit the unfinished jobs as one array, wait for every task, report each job."""
        results = [JobResult(job, "skipped") for job in jobs]
        submitted = self.submit(jobs)
        if submitted:
            log(f"submitted {len(submitted)} runs as SLURM job {submitted[0][1].job_id}")
        for i, task in submitted:
            try:
                results[i] = task.result()
            except Exception as err:  # the task itself failed (cancelled, node lost, ...)
                log(f"SLURM task {task.job_id} failed: {str(err).strip().splitlines()[-1][:200]}")
                results[i] = JobResult(jobs[i], "failed")
            log(_describe(results[i]))
        return LaunchOutcome(results)


def _auto_executor(folder: Path) -> Any:
    try:
        import submitit
    except ImportError as err:
        raise UserError(
            "the SLURM launcher needs submitit; install it with pip install 'riftune[slurm]'"
        ) from err
    return submitit.AutoExecutor(folder=str(folder / "%j"))


SLURM_FLAGS = {
    "slurm_partition": "partition",
    "slurm_time": "time_minutes",
    "slurm_gpus": "gpus_per_job",
    "slurm_cpus": "cpus_per_task",
    "slurm_parallel": "array_parallelism",
    "slurm_logs": "folder",
}
"""``--slurm-*`` flag (argparse dest) → :class:`SlurmLauncher` field."""


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--launcher`` and the ``--slurm-*`` flags of a command that launches runs."""
    parser.add_argument("--jobs", type=int, default=1, help="local runs at once (default: 1)")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="where the runs execute: local processes (--jobs at once) or a SLURM job array "
        "through submitit (pip install 'riftune[slurm]'); either way a finished run is "
        "skipped and an interrupted one resumes",
    )
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    slurm.add_argument("--slurm-partition", help="partition (default: the cluster's)")
    slurm.add_argument("--slurm-time", type=int, help="time limit per run, minutes (default: 60)")
    slurm.add_argument("--slurm-gpus", type=int, help="GPUs per run (default: 1)")
    slurm.add_argument("--slurm-cpus", type=int, help="CPU cores per run (default: 4)")
    slurm.add_argument(
        "--slurm-parallel", type=int, help="at most this many runs at once (default: 16)"
    )
    slurm.add_argument("--slurm-logs", help="submitit's scripts and logs (default: OUT/slurm)")


def slurm_launcher(
    settings: dict[str, Any], default_folder: Path, executor: Any = None
) -> SlurmLauncher:
    """A :class:`SlurmLauncher` of a grid's or a study's SLURM settings (its fields by name;
    ``folder`` defaults to ``default_folder``).

    Raises:
        UserError: an unknown setting, or a value of the wrong type.
    """
    settings = dict(settings)
    known = {f.name for f in dataclasses.fields(SlurmLauncher)} - {"executor"}
    unknown = sorted(set(settings) - known, key=str)
    if unknown:
        raise UserError(f"slurm: unknown settings {unknown}; known: {sorted(known)}")
    folder = settings.pop("folder", None) or default_folder
    if not isinstance(folder, str | Path):
        raise UserError(f"slurm: folder {folder!r} is not a path")
    return SlurmLauncher(folder=Path(folder), executor=executor, **settings)


def slurm_settings(args: argparse.Namespace) -> dict:
    """The :class:`SlurmLauncher` fields the ``--slurm-*`` flags give."""
    return {key: getattr(args, flag) for flag, key in SLURM_FLAGS.items() if getattr(args, flag)}
