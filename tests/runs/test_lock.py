"""One writer per run folder: ``run_dir.run_lock`` between real processes, including SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from riftune.errors import UserError
from riftune.runs.folder import RunDir, run_lock

REPO_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from riftune.runs.folder import RunDir, run_lock
    from riftune.errors import UserError

    try:
        with run_lock(RunDir(Path(sys.argv[1]))):
            print("locked", flush=True)
            sys.stdin.readline()  # hold until the test closes stdin (or kills us)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    """
)


def _start_holder(folder) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=REPO_ENV,
    )
    assert process.stdout.readline().strip() == "locked", process.stderr.read()
    return process


def _second_writer(folder) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HOLDER, str(folder)],
        input="",
        capture_output=True,
        text=True,
        env=REPO_ENV,
        timeout=60,
    )


def _record(folder) -> dict:
    return json.loads((folder / ".lock").read_text())


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        assert _record(tmp_path)["pid"] == holder.pid
        second = _second_writer(tmp_path)
        assert second.returncode == 2
        message = second.stderr.strip()
        assert "\n" not in message
        assert f"pid {holder.pid} on {socket.gethostname()}, since " in message
        assert str(tmp_path) in message
        with pytest.raises(UserError, match=f"pid {holder.pid} "):  # and this process too
            with run_lock(RunDir(tmp_path)):
                pass
    finally:
        holder.communicate(input="\n", timeout=60)
    assert holder.returncode == 0
    assert (tmp_path / ".lock").read_text() == ""  # released on exit: the record is emptied
    second = _second_writer(tmp_path)
    assert second.returncode == 0, second.stderr


def test_a_holder_killed_by_sigkill_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    holder.stdin.close()
    assert _record(tmp_path)["pid"] == holder.pid  # the dead holder's record is still there
    with run_lock(RunDir(tmp_path)) as me:
        assert me.pid == os.getpid()
        assert _record(tmp_path)["pid"] == os.getpid()
        second = _second_writer(tmp_path)  # and now we hold it against others
        assert second.returncode == 2 and f"pid {os.getpid()} " in second.stderr


def test_the_same_process_cannot_take_its_own_lock_twice(tmp_path):
    run = RunDir(tmp_path)
    with run_lock(run), pytest.raises(UserError, match="being written by"):
        with run_lock(run):
            pass


def test_a_record_from_another_host_is_refused_and_says_how_to_clear_it(tmp_path):
    record = {"pid": 1, "host": "node-elsewhere", "started": "2026-01-01T00:00:00+0000"}
    (tmp_path / ".lock").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"pid 1 on node-elsewhere.*delete .*\.lock") as caught:
        with run_lock(RunDir(tmp_path)):
            pass
    assert "\n" not in str(caught.value)
    assert _record(tmp_path) == record  # refused without touching the record
    (tmp_path / ".lock").unlink()
    with run_lock(RunDir(tmp_path)):
        assert _record(tmp_path)["host"] == socket.gethostname()


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    run = RunDir(tmp_path / "new" / "run")  # created by the lock
    with pytest.raises(RuntimeError), run_lock(run):
        raise RuntimeError("boom")
    assert run.lock.read_text() == ""
    with run_lock(run):
        pass
