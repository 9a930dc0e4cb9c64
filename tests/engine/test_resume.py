"""A run killed with SIGKILL, or stopped by SIGTERM, in the middle of an epoch and resumed ends
exactly like one never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from riftune.runs.signals import PREEMPTED_EXIT

FLAGS = ["--data", "breastmnist", "--img-size", "32", "--shots", "24", "--batch-size", "8",
         "--eval-batch-size", "64", "--epochs", "2", "--reg", "rift", "--checkpoint-every", "2",
         "--augment", "--landscape-images", "16", "--hessian-iters", "2"]  # fmt: skip
KILL_AT_STEP = 3  # epoch 1 has 48 / 8 = 6 steps: a checkpoint at step 2, killed during step 4

# Runs the real CLI, but SIGKILLs its own process right after optimizer step KILL_AT_STEP + 1
# starts: no cleanup, no atexit, exactly what a crash or an OOM killer does.
CRASHING_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from riftune.engine import step
    from riftune.cli import main

    calls = 0
    original = step.TrainStep.__call__

    def crash_after(self, *args):
        global calls
        calls += 1
        if calls > {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args)

    step.TrainStep.__call__ = crash_after
    sys.exit(main(sys.argv[1:]))
    """
)


def _env(medmnist_dir):
    return {**os.environ, "RIFTUNE_DATA": str(medmnist_dir), "OMP_NUM_THREADS": "1"}


def _finetune(args, env, driver=None):
    prefix = [sys.executable, "-c", driver] if driver else [sys.executable, "-m", "riftune"]
    return subprocess.run(
        prefix + ["finetune", *args], capture_output=True, text=True, env=env, timeout=900
    )


# the same, but the run sends itself SIGTERM during that step, as a cluster does before it kills
SIGTERM_DRIVER = CRASHING_DRIVER.replace("signal.SIGKILL", "signal.SIGTERM")

# λ as a Lagrange multiplier: its value and running mean must survive the interruption too
BUDGET = ["--target-similarity", "0.97", "--budget-lr", "5"]
# FTP's learned radii and their Adam moments live in the optimizer's state (the later --reg wins)
FTP = ["--reg", "ftp"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("driver", "extra"),
    [
        (CRASHING_DRIVER, []),
        (CRASHING_DRIVER, BUDGET),
        (SIGTERM_DRIVER, []),
        (CRASHING_DRIVER, FTP),
    ],
    ids=["sigkill", "sigkill-budget", "sigterm", "sigkill-ftp"],
)
def test_interrupted_mid_epoch_then_resume_is_bit_identical(tmp_path, medmnist_dir, driver, extra):
    env = _env(medmnist_dir)
    flags = FLAGS + extra
    straight = _finetune(flags + ["--out", str(tmp_path / "straight")], env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "crashed"
    crashed = _finetune(flags + ["--out", str(out)], env, driver.format(kill_at=KILL_AT_STEP))
    assert not (out / "metrics.json").exists()
    if driver is SIGTERM_DRIVER:  # a checkpoint at the step boundary, a status, one line
        assert crashed.returncode == PREEMPTED_EXIT, crashed.stderr[-2000:]
        last = crashed.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: stopped by SIGTERM after step {KILL_AT_STEP + 1};")
        assert (out / "checkpoints" / f"step-{KILL_AT_STEP + 1:08d}.safetensors").is_file()
    else:
        assert crashed.returncode == -signal.SIGKILL

    resumed = _finetune(flags + ["--out", str(out), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["test"] == b["test"]  # bit-identical on the CPU
    assert a["val"] == b["val"]
    assert a["best_epoch"] == b["best_epoch"]
    steps_a = (tmp_path / "straight" / "steps.csv").read_text()
    steps_b = (out / "steps.csv").read_text()
    assert steps_a == steps_b
    if extra is BUDGET:  # the budget moved λ (it starts at 0), and steps.csv shows it
        lams = [float(row.split(",")[5]) for row in steps_a.splitlines()[1:]]
        assert steps_a.splitlines()[0].endswith(",lam,reg_mean") and lams[0] == 0 < max(lams)
        history = (tmp_path / "straight" / "history.csv").read_text().splitlines()
        assert "lam" in history[0].split(",")  # the training figure draws λ from it


@pytest.mark.slow
def test_corrupted_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, medmnist_dir):
    from riftune.runs import checkpoint_file as checkpoint

    env = _env(medmnist_dir)
    out = tmp_path / "run"
    crashed = _finetune(FLAGS + ["--out", str(out)], env, CRASHING_DRIVER.format(kill_at=5))
    assert crashed.returncode == -signal.SIGKILL
    files = sorted((out / "checkpoints").glob("step-*.safetensors"))
    newest = files[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=newest.name):
        checkpoint.load_checkpoint(newest)
    assert checkpoint.latest_valid_checkpoint(out / "checkpoints") not in (None, newest)

    resumed = _finetune(FLAGS + ["--out", str(out), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "metrics.json").is_file()
    assert "resumed from step-00000002" in resumed.stderr  # the previous good checkpoint
