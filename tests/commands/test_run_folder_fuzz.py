"""Damaged run folders given to ``evaluate``, ``wise-ft``, ``export`` and ``predict``: one
``error:`` line, exit status 2 and nothing already written lost, never a traceback.

One real run (EfficientNet-Lite0 on 4 BreastMNIST images a class, one epoch) is finished once
per module (so the module is ``slow``). Each hypothesis example copies it and damages its config.yaml, its best checkpoint
or its metrics.json (random bytes, a truncation, flipped bytes in the checkpoint, a section of
the configuration replaced by random YAML), then rebuilds it as all four commands do
(:func:`~riftune.commands.evaluate.load_finished_run`): the run, or one UserError line, and
the folder unchanged. Then each command runs in-process (:func:`riftune.cli.main`) on one
damaged folder: exit status 2, one line, no file of the folder changed and no output written.

Cases per CI run (``max_examples``): 20 damaged folders, plus the 6 commands below.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riftune.cli import main
from riftune.commands.evaluate import load_finished_run
from riftune.errors import UserError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("run_folder_fuzz"),
]

FUZZ = settings(
    deadline=timedelta(seconds=30),  # a rebuild on a loaded CI machine takes seconds
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run
)
REPO = Path(__file__).resolve().parents[2]
BEST = "checkpoints/best.safetensors"
RANDOM = np.random.default_rng(0).bytes(300)
VICTIMS = ["config.yaml", BEST, "metrics.json"]
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=6)
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, medmnist_dir) -> Path:
    out = tmp_path_factory.mktemp("fuzzed") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "riftune", "finetune", "--data", "breastmnist",
         "--data-root", str(medmnist_dir), "--epochs", "1", "--img-size", "28", "--shots", "4",
         "--batch-size", "4", "--landscape-images", "0", "--hessian-iters", "0",
         "--out", str(out), "--quiet"],
        check=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert (out / BEST).is_file()
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _damage(path: Path, draw) -> None:
    raw = path.read_bytes()
    kind = draw(st.sampled_from(["random", "truncate", "flip", "yaml"]))
    if kind == "random":
        path.write_bytes(draw(st.binary(max_size=256)))
    elif kind == "truncate":
        path.write_bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    elif kind == "flip" and path.suffix == ".safetensors":
        out = bytearray(raw)
        for pos in draw(
            st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True)
        ):
            out[pos] ^= 0xFF
        path.write_bytes(bytes(out))
    elif path.suffix == ".yaml":  # a section replaced: wrong types, lists, unknown keys
        config = yaml.safe_load(raw)
        config[draw(st.sampled_from(sorted(config)))] = draw(YAML_VALUES)
        path.write_text(yaml.safe_dump(config))
    else:
        path.write_bytes(raw[: len(raw) // 2])


@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_damaged_run_folders_rebuild_or_are_refused_in_one_line(finished_run, data):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as name:
        run = Path(name) / "run"
        shutil.copytree(finished_run, run)
        victim = data.draw(st.sampled_from(VICTIMS))
        _damage(run / victim, data.draw)
        before = _snapshot(run)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_finished_run(run, "cpu")
            assert victim != BEST, "a damaged checkpoint loaded"  # its checksum covers it all
        except UserError as error:
            assert "\n" not in str(error) and str(error).strip()
        assert _snapshot(run) == before, "rebuilding changed the run folder"


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue().splitlines()


@pytest.mark.parametrize(
    ("command", "victim", "damage", "message"),
    [
        ("evaluate", "config.yaml", lambda raw: RANDOM, "is not valid YAML"),
        ("wise-ft", BEST, lambda raw: raw[: len(raw) // 2], "best.safetensors"),
        # one bit of the last tensor's bytes (past the header, whose length varies by run)
        ("export", BEST, lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "checksum"),
        ("predict", "config.yaml", lambda raw: b"riftune_config: 2\ntraining: [1]\n", "mapping"),
        # the configuration of another model than the checkpoint's
        ("evaluate", "config.yaml", lambda raw: raw.replace(b"name: full", b"name: lora"),
         "does not hold the model"),
    ],
)  # fmt: skip
def test_each_command_refuses_a_damaged_run_in_one_line(
    finished_run, tmp_path, command, victim, damage, message
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / victim).write_bytes(damage((run / victim).read_bytes()))
    before = _snapshot(run)
    out = tmp_path / "out.csv"
    out.write_text("kept\n")  # an earlier prediction: not lost
    argv = {
        "evaluate": ["evaluate", "--run", str(run), "--device", "cpu"],
        "wise-ft": ["wise-ft", "--run", str(run), "--alphas", "0,1", "--device", "cpu"],
        "export": ["export", "--run", str(run), "--out", str(tmp_path / "m.safetensors")],
        "predict": ["predict", "--run", str(run), "--data", "breastmnist", "--out", str(out)],
    }[command]
    status, lines = _cli(argv)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0]
    assert _snapshot(run) == before and out.read_text() == "kept\n"
    assert not (tmp_path / "m.safetensors").exists()


def test_predict_refuses_damaged_images_without_losing_the_earlier_csv(finished_run, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, test_images=images)
    (tmp_path / "new.npz").write_bytes(buffer.getvalue()[:-40])  # truncated
    out = tmp_path / "out.csv"
    out.write_text("kept\n")
    status, lines = _cli(
        ["predict", "--run", str(finished_run), "--data", str(tmp_path / "new.npz"),
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert out.read_text() == "kept\n"
