"""Grid launchers: idempotent jobs, local processes with signal forwarding, SLURM via submitit.

The jobs are real processes: a small stand-in for ``riftune finetune`` (which records its
flags and the signals it gets, and writes the files a run writes), and one real tiny
finetune through submitit's local executor. SLURM itself is replaced by a fake ``sbatch``
that keeps the script it is given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from riftune.errors import UserError
from riftune.runs.folder import RunDir
from riftune.runs.launchers import (
    GridJob,
    LocalLauncher,
    SlurmLauncher,
    SlurmTask,
    again_flags,
    slurm_launcher,
)
from riftune.runs.signals import PREEMPTED_EXIT

submitit = pytest.importorskip("submitit")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}

# Stands in for `riftune finetune`: runs until $RELEASE exists (then finishes the run) or a
# stop signal arrives (then "checkpoints" and exits with PREEMPTED_EXIT, listing the signals).
WORKER = textwrap.dedent(
    f"""
    import os, pathlib, signal, sys, time
    folder = pathlib.Path(sys.argv[1])
    with open(folder / "calls.log", "a") as log:
        log.write(" ".join(sys.argv[2:]) + "\\n")
    got = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda n, f: got.append(n))
    (folder / "config.yaml").write_text("run")
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "step.safetensors").write_text("state")
    (folder / "started").touch()
    while not got and not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.02)
    time.sleep(0.5)  # a second, forwarded signal would arrive meanwhile
    if got:
        (folder / "signals").write_text(",".join(map(str, got)))
        raise SystemExit({PREEMPTED_EXIT})
    (folder / "metrics.json").write_text("{{}}")
    """
)

LAUNCH = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from riftune.runs.launchers import GridJob, LocalLauncher
    worker, folders = sys.argv[1], sys.argv[2:]
    jobs = [GridJob((sys.executable, "-c", worker, f), Path(f)) for f in folders]
    outcome = LocalLauncher(jobs=2).run(jobs, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"stopped_by": outcome.stopped_by,
                      "status": [r.status for r in outcome.results]}))
    """
)


def _jobs(folders: list[Path]) -> list[GridJob]:
    return [GridJob((sys.executable, "-c", WORKER, str(f)), f) for f in folders]


def _calls(folder: Path) -> list[str]:
    return (folder / "calls.log").read_text().splitlines()


def _finished(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    return folder


def _wait_for(paths: list[Path], process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{paths} did not appear"
        time.sleep(0.05)


def test_again_flags_follow_the_run_folder(tmp_path):
    run = RunDir(tmp_path)
    assert again_flags(run) == []
    run.config.write_text("x")  # failed before its first checkpoint: start again
    assert again_flags(run) == ["--overwrite"]
    run.checkpoints.mkdir()
    assert again_flags(run) == ["--overwrite"]  # an empty checkpoints folder holds nothing
    (run.checkpoints / "step-1.safetensors").write_text("x")
    assert again_flags(run) == ["--resume"]


def test_local_launcher_forwards_sigterm_once_and_the_grid_resumes(tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv("RELEASE", str(release))
    folders = [tmp_path / name for name in ("a", "b", "c")]
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, WORKER, *map(str, folders)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "RELEASE": str(release)},
    )
    _wait_for([folders[0] / "started", folders[1] / "started"], launcher)
    launcher.send_signal(signal.SIGTERM)  # to the launcher only, not to its workers
    out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err
    outcome = json.loads(out)
    assert outcome == {"stopped_by": "SIGTERM", "status": ["stopped", "stopped", "not started"]}
    for folder in folders[:2]:
        assert (folder / "signals").read_text() == str(int(signal.SIGTERM))  # exactly once
    assert not folders[2].exists()

    release.touch()  # launched again, the grid continues where it stopped
    again = LocalLauncher(jobs=2).run(_jobs(folders), log=lambda message: None)
    assert [r.status for r in again.results] == ["done", "done", "done"]
    assert again.stopped_by is None
    assert _calls(folders[0]) == _calls(folders[1]) == ["", "--resume"]
    assert _calls(folders[2]) == [""]
    third = LocalLauncher(jobs=2).run(_jobs(folders), log=lambda message: None)
    assert [r.status for r in third.results] == ["skipped"] * 3
    assert _calls(folders[0]) == ["", "--resume"]  # nothing ran


def test_submitit_local_executor_runs_the_unfinished_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE", str(tmp_path))  # exists: every job finishes at once
    folders = [_finished(tmp_path / "a"), tmp_path / "b", tmp_path / "c"]
    folders[2].mkdir()
    (folders[2] / "config.yaml").write_text("a run that failed before its first checkpoint")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    launcher = SlurmLauncher(tmp_path / "submitit", gpus_per_job=0, executor=executor)
    messages = []
    outcome = launcher.run(_jobs(folders), log=messages.append)
    assert [r.status for r in outcome.results] == ["skipped", "done", "done"]
    assert not (folders[0] / "calls.log").exists()
    assert _calls(folders[1]) == [""] and _calls(folders[2]) == ["--overwrite"]
    assert all((f / "metrics.json").is_file() for f in folders)
    assert sum(m.startswith("done: ") for m in messages) == 2


def test_slurm_launcher_submits_one_array_with_the_parameters(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # a fake SLURM: keeps the script, answers with a job id
    sbatch.write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it, never runs it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    folders = [runs / "a", _finished(runs / "b"), runs / "c", runs / "d"]
    launcher = SlurmLauncher(
        tmp_path / "logs",
        partition="gpu",
        time_minutes=90,
        gpus_per_job=1,
        cpus_per_task=8,
        array_parallelism=2,
        extra={"slurm_mem_gb": 32},
        executor=submitit.AutoExecutor(folder=str(tmp_path / "logs" / "%j"), cluster="slurm"),
    )
    submitted = launcher.submit(_jobs(folders))
    assert [i for i, _ in submitted] == [0, 2, 3]  # the finished run is not submitted
    assert [task.job_id for _, task in submitted] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text().splitlines()
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--array=0-2%2", "--mem=32GB", "--ntasks-per-node=1", "--nodes=1"):  # fmt: skip
        assert f"#SBATCH {line}" in script, script
    for (i, task), folder in zip(submitted, (folders[0], *folders[2:]), strict=True):
        delayed = submitit.core.utils.DelayedSubmission.load(task.paths.submitted_pickle)
        assert isinstance(delayed.function, SlurmTask) and delayed.function.stop_grace_s == 80
        assert delayed.args == (_jobs(folders)[i],)
        assert delayed.args[0].folder == folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"partitoin": "gpu"}, r"unknown settings \['partitoin'\]"),
        ({"folder": 5}, "folder 5 is not a path"),
        ({"time_minutes": "1h"}, "time_minutes must be an integer; got '1h'"),
        ({"gpus_per_job": True}, "gpus_per_job must be an integer"),
        ({"stop_grace_s": [80]}, "stop_grace_s must be a number"),
        ({"extra": ["mem"]}, "extra a mapping"),
    ],
)
def test_wrong_slurm_settings_are_one_line_errors(tmp_path, settings, message):
    with pytest.raises(UserError, match=message) as caught:
        slurm_launcher(settings, tmp_path / "slurm")
    assert "\n" not in str(caught.value)
    assert slurm_launcher({"time_minutes": 5}, tmp_path / "slurm").folder == tmp_path / "slurm"


def test_a_tiny_real_finetune_through_submitit_local(tmp_path, medmnist_dir, monkeypatch):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    folder = tmp_path / "run"
    argv = (sys.executable, "-m", "riftune", "finetune", "--data", "breastmnist", "--epochs", "1",
            "--img-size", "28", "--shots", "8", "--batch-size", "8", "--eval-batch-size", "64",
            "--landscape-images", "8", "--hessian-iters", "2", "--out", str(folder), "--quiet")  # fmt: skip
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    launcher = SlurmLauncher(tmp_path / "submitit", gpus_per_job=0, executor=executor)
    outcome = launcher.run([GridJob(argv, folder)], log=lambda message: None)
    assert outcome.results[0].status == "done", (folder / "compare.log").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["test"]["auc"] <= 1
    again = launcher.run([GridJob(argv, folder)], log=lambda message: None)
    assert again.results[0].status == "skipped"


@pytest.mark.slow
def test_a_task_told_its_time_is_up_stops_its_run_and_is_requeued_to_resume(tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv("RELEASE", str(release))
    folder = tmp_path / "run"
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    # submitit's local SIGUSR2 then comes 60 - 20 = 40 s into the task (the local executor's
    # own parameter, which AutoExecutor does not pass on)
    executor._executor.update_parameters(signal_delay_s=20)
    launcher = SlurmLauncher(
        tmp_path / "submitit", time_minutes=1, gpus_per_job=0, stop_grace_s=15, executor=executor
    )
    [(_, task)] = launcher.submit(_jobs([folder]))
    deadline = time.monotonic() + 240
    while not (folder / "signals").exists():  # the run got SIGTERM from its task and stopped
        assert time.monotonic() < deadline and not task.done(), task.stderr()
        time.sleep(0.2)
    release.touch()  # the requeued task can now finish the run
    result = task.result()
    assert result.status == "done", task.stderr()
    assert (folder / "signals").read_text() == str(int(signal.SIGTERM))  # SIGUSR2 was ignored
    assert _calls(folder) == ["", "--resume"]
    assert (folder / "metrics.json").is_file()
