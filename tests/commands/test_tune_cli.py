"""``riftune tune`` end to end on real data: the CLI on BreastMNIST killed with SIGKILL mid-study
and run again, tuned.yaml trained by ``finetune --config``, and ``riftune.tune`` in Python on a
CSV dataset grouped by patient whose test images cannot be decoded."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import riftune
from riftune.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--shots", "10", "--epochs", "1", "--img-size", "28", "--batch-size", "8"]


def _env(medmnist_dir: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "RIFTUNE_DATA": str(medmnist_dir)}  # fmt: skip


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _trial_metrics(study: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(study / "trials")): json.loads(p.read_text())
        for p in (study / "trials").glob("*/fold*/metrics.json")
    }


@pytest.mark.slow
def test_tune_survives_sigkill_and_its_choice_trains_with_finetune_config(
    tmp_path, medmnist_dir, monkeypatch
):
    study = tmp_path / "study"
    command = [sys.executable, "-m", "riftune", "tune", "--out", str(study), "--folds", "2",
               "--budgets", "0.5,0.25", "--prune-margin", "100", "--data", "breastmnist", *TINY]  # fmt: skip
    with open(tmp_path / "first.log", "w") as log:  # the process keeps its own copy
        first = subprocess.Popen(command, env=_env(medmnist_dir), stderr=log)
    finished = study / "trials" / "plain" / "fold0" / "metrics.json"
    deadline = time.monotonic() + 300
    while not finished.is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert finished.is_file(), (tmp_path / "first.log").read_text()
    time.sleep(2)  # the next trial has started
    running = _children(first.pid)
    first.kill()  # SIGKILL: no handler runs, no checkpoint of the study itself
    for pid in running:  # and the run in flight, as when the node goes down
        os.kill(pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    kept = finished.stat().st_mtime_ns

    again = subprocess.run(command, env=_env(medmnist_dir), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert finished.stat().st_mtime_ns == kept  # the finished trial was read, not rerun
    metrics = _trial_metrics(study)
    names = {key.split("/")[0] for key in metrics}
    assert len(metrics) == 6 and len(names) == 3, sorted(metrics)  # plain + 2 budget rungs
    assert not any("test" in m for m in metrics.values())  # the test split was never read
    report = (study / "report.md").read_text()
    assert all(name in report for name in names) and (study / "tune.png").is_file()
    state = json.loads((study / "tune.json").read_text())
    assert state["pruned"] == [] and "**" + state["chosen"] in report

    tuned = yaml.safe_load((study / "tuned.yaml").read_text())
    assert tuned["data"]["cv_folds"] is None and tuned["training"]["epochs"] == 1
    run = tmp_path / "final"
    final = ["finetune", "--config", str(study / "tuned.yaml"), "--out", str(run), "--seed", "1",
             "--landscape-images", "0", "--bootstrap-resamples", "0", "--quiet"]  # fmt: skip
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    assert main(final) == 0
    trained = yaml.safe_load((run / "config.yaml").read_text())
    assert trained["training"]["seed"] == 1
    assert trained["regularizer"] == tuned["regularizer"]  # the chosen candidate
    assert "test" in json.loads((run / "metrics.json").read_text())


def grouped_csv(folder: Path) -> Path:
    """16 train and 8 val images (two per patient, the class alternating by patient) and 4
    test images that are not images at all: a study that decoded one would fail."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 16), ("val", 8), ("test", 4)):
        for i in range(count):
            name, patient, label = f"{split}{i}.png", f"{split}{i // 2}", (i // 2) % 2
            if split == "test":
                (folder / name).write_bytes(b"not an image")
            else:
                pixels = rng.integers(0, 120, (16, 16)) + 120 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
            rows.append({"image": name, "label": label, "split": split, "patient": patient})
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "labels.csv"


@pytest.mark.slow
def test_tune_in_python_on_a_grouped_csv(tmp_path, monkeypatch):
    table = grouped_csv(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    text = riftune.tune(
        {
            "out": "study",
            "finetune": {
                "data": f"csv:{table}",
                "group_column": "patient",
                "img_size": 16,
                "epochs": 1,
                "batch_size": 8,
            },
            "regularizers": ["cka"],
            "ladder": "lam",
            "lams": [1.0],
            "folds": 2,
            "prune_margin": 100,
            "quiet": True,
        }
    )
    assert "cka[lam=1]" in text and "plain" in text
    metrics = _trial_metrics(tmp_path / "study")
    assert sorted(metrics) == ["cka[lam=1]/fold0", "cka[lam=1]/fold1", "plain/fold0", "plain/fold1"]
    assert not any("test" in m for m in metrics.values())
    for fold in ("fold0", "fold1"):
        config = yaml.safe_load(
            (tmp_path / "study/trials/plain" / fold / "config.yaml").read_text()
        )
        assert config["data"]["group_column"] == "patient"
        assert config["data"]["cv_folds"] == 2 and config["data"]["cv_fold"] == int(fold[-1])


def test_tune_refuses_what_it_chooses_itself(tmp_path, capsys):
    assert main(["tune", "--out", str(tmp_path / "s"), "--reg", "rift"]) == 2
    assert capsys.readouterr().err == "error: tune sets --reg itself; use --regularizers\n"
    assert main(["tune", "--out", str(tmp_path / "s"), "--methods", "lora"]) == 2
    assert "must include full" in capsys.readouterr().err
    assert main(["tune", "--out", str(tmp_path / "s"), "--folds", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["tune", "--out", str(tmp_path / "s"), "--data", "breastmnst"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'breastmnst'")
    assert not (tmp_path / "s").exists()
