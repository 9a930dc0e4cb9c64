"""SIGTERM / SIGINT: a flag at step boundaries, the exit status, and agreement across ranks.

The loops here are real processes getting real signals; the distributed one runs two gloo
processes of which only rank 0 is signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from riftune.distributed import DistributedContext
from riftune.runs.signals import PREEMPTED_EXIT, GracefulStop, stop_message

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
MAX_STEPS = 3000  # a loop that never sees the stop gives up here (and fails the test)

LOOP = textwrap.dedent(
    f"""
    import sys, time
    from riftune import distributed
    from riftune.runs.signals import PREEMPTED_EXIT, GracefulStop, Preempted

    def train(ctx):
        with GracefulStop() as stop:
            for step in range(1, {MAX_STEPS} + 1):
                time.sleep(0.02)  # the "training step"
                print(f"step {{step}}", flush=True)
                if stop.should_stop(ctx):  # here the run writes its checkpoint
                    print(f"rank {{ctx.rank}} received {{stop.received}}", flush=True)
                    raise Preempted(stop.signal_name, step, "ckpt")

    ctx = distributed.setup("cpu")
    try:
        train(ctx)
    except Preempted as stopped:  # what the command line does
        print(stopped, file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT)
    finally:
        distributed.teardown()
    raise SystemExit(1)
    """
)


def _start(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(process: subprocess.Popen, step: int) -> str:
    """Read the loop's output up to ``step 'step'``; returns what was read."""
    seen = ""
    while line := process.stdout.readline():
        seen += line
        if line.strip() == f"step {step}":
            return seen
    raise AssertionError(f"the loop ended before step {step}: {process.stderr.read()}")


def _finish(process: subprocess.Popen, seen: str = "") -> tuple[str, str]:
    """The rest of the output (read through the same buffers as before) and stderr."""
    out = seen + process.stdout.read()  # the output is a few kB: no pipe fills up meanwhile
    err = process.stderr.read()
    process.wait(timeout=120)
    return out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_loop_stops_at_the_next_step_with_the_status_and_one_line(signum):
    process = _start(ENV)
    seen = _wait_for_step(process, 3)
    process.send_signal(signum)
    out, err = _finish(process, seen)
    assert process.returncode == PREEMPTED_EXIT
    steps = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    assert 3 <= steps[-1] < 100  # it stepped until the signal (sent after step 3), then stopped
    assert f"rank 0 received {int(signum)}" in out
    assert err.strip() == stop_message(signum.name, steps[-1], "ckpt")


def test_only_rank_0_is_signalled_and_both_ranks_stop_after_the_same_step():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [_start({**common, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        seen = _wait_for_step(ranks[0], 5)
        ranks[0].send_signal(signal.SIGTERM)
        results = [_finish(ranks[0], seen), _finish(ranks[1])]
    finally:
        for rank in ranks:
            rank.kill()
    last_steps = []
    for rank, (out, err) in zip(ranks, results, strict=True):
        assert rank.returncode == PREEMPTED_EXIT, err
        last_steps.append(int([ln for ln in out.splitlines() if ln.startswith("step ")][-1][5:]))
    assert last_steps[0] == last_steps[1] < 100
    assert "rank 0 received 15" in results[0][0] and "rank 1 received 0" in results[1][0]
    for _, err in results:  # rank 1 learns which signal stopped the run from the all-reduce
        assert err.strip() == stop_message("SIGTERM", last_steps[0], "ckpt")


def test_the_previous_handlers_come_back_and_a_signal_only_sets_the_flag():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        world_of_one = DistributedContext(0, 1, 0, None)
        with GracefulStop() as stop:
            assert not stop.should_stop(world_of_one)
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and stop.should_stop(world_of_one)
            assert stop.signal_name == "SIGTERM" and seen == []
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # our own handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_more_sigterms_change_nothing():
    with GracefulStop() as stop:
        for _ in range(3):  # e.g. from SLURM and, forwarded, from a launcher
            signal.raise_signal(signal.SIGTERM)
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_sigint_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt), GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the interrupt lands at the next bytecode boundary
            pass
        pytest.fail("the second SIGINT did not interrupt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
