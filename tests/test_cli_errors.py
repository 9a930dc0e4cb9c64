"""Bad input ends with exit status 2 and one line naming the problem and the fix; nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from riftune.cli import main
from riftune.config.sections import TrainingConfig
from riftune.engine.build import local_micro_batches
from riftune.errors import UserError

TINY = ["--img-size", "32", "--shots", "10", "--batch-size", "8", "--epochs", "1", "--quiet",
        "--landscape-images", "16", "--hessian-iters", "2"]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _fails(capsys, argv, *needles, code=2):
    assert main(argv) == code
    line = _error_line(capsys)
    for needle in needles:
        assert needle in line, line
    return line


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _valid_arrays(n=8, size=28, classes=2):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).astype(np.uint8).reshape(n, 1)
    return arrays


def test_data_path_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere.npz"
    _fails(
        capsys,
        ["finetune", "--data", str(missing), "--out", str(tmp_path / "o"), *TINY],
        str(missing),
    )


def test_file_that_is_not_an_npz(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip file")
    _fails(capsys, ["finetune", "--data", str(bad), "--out", str(tmp_path / "o"), *TINY], "bad.npz")


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda a: a.pop("val_labels"), "val_labels"),
        (lambda a: a.update(train_labels=a["train_labels"][:-1]), "train"),
        (lambda a: a.update(test_labels=np.full((8, 1), 7, dtype=np.uint8)), "label"),
        (lambda a: a.update(train_images=a["train_images"].astype(np.float32)), "uint8"),
        (lambda a: a.update(val_images=np.zeros((8, 28), dtype=np.uint8)), "val_images"),
    ],
    ids=["missing-key", "count-mismatch", "label-out-of-range", "wrong-dtype", "wrong-shape"],
)
def test_npz_with_bad_content(tmp_path, capsys, change, needle):
    arrays = _valid_arrays()
    arrays["train_labels"][:2] = [[0], [1]]
    change(arrays)
    path = _npz(tmp_path / "broken.npz", **arrays)
    _fails(capsys, ["finetune", "--data", path, "--out", str(tmp_path / "o"), *TINY], needle)


@pytest.mark.parametrize(
    "flag, value, listed",
    [
        ("--backbone", "resnet9000", "efficientnet_lite0"),
        ("--method", "dance", "lora"),
        ("--reg", "magic", "rift"),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, capsys, medmnist_dir, flag, value, listed):
    argv = [
        "finetune",
        "--data-root",
        str(medmnist_dir),
        flag,
        value,
        "--out",
        str(tmp_path / "o"),
        *TINY,
    ]
    line = _fails(capsys, argv, value, listed)
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert line


@pytest.mark.parametrize("lam", ["-1", "nan", "inf"])
def test_negative_or_non_finite_lambda(tmp_path, capsys, lam):
    assert main(["finetune", "--lam", lam, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lam") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_batch_too_small_for_rift(tmp_path, capsys, medmnist_dir):
    argv = ["finetune", "--data-root", str(medmnist_dir), "--reg", "rift", "--out", str(tmp_path / "o"),
            *TINY, "--batch-size", "1"]  # fmt: skip
    _fails(capsys, argv, "--batch-size", "rift")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ("--reg l2sp --l2sp-beta-ratio -1", "--l2sp-beta-ratio"),
        ("--reg delta --delta-attention-images 0", "--delta-attention-images"),
        ("--reg rift --rift-momentum 0", "momentum"),
        ("--reg rift --rift-q learned --rift-q-rank 3", "rank"),
        ("--reg rift --rift-q optimal --rift-q-rank 64", "--rift-q-rank"),
        ("--reg rift --rift-q optimal --rift-q-lr 1e-4", "--rift-q-lr"),
        ("--reg rift --rift-match paired --rift-stats ema", "ema"),
    ],
)
def test_bad_regularizer_flags_stop_before_the_run_folder(
    tmp_path, capsys, medmnist_dir, flags, needle
):
    argv = ["finetune", "--data-root", str(medmnist_dir), *flags.split(), "--out",
            str(tmp_path / "o"), *TINY]  # fmt: skip
    line = _fails(capsys, argv, needle)
    assert line.count("--reg") == 1, line
    assert not (tmp_path / "o").exists()  # the corrected command can use the same --out


@pytest.mark.parametrize("reg", ["rift", "cka", "feature-distill", "delta", "ldifs", "bss", "ftp"])
def test_representation_penalty_with_a_frozen_backbone(tmp_path, capsys, medmnist_dir, reg):
    argv = ["finetune", "--data-root", str(medmnist_dir), "--method", "linear", "--reg", reg,
            "--out", str(tmp_path / "o"), *TINY]  # fmt: skip
    _fails(capsys, argv, f"--reg {reg}", "--method linear", "no effect")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_finished_run_is_never_replaced_without_overwrite(tmp_path, capsys, medmnist_dir):
    out = tmp_path / "run"
    argv = ["finetune", "--data-root", str(medmnist_dir), "--out", str(out), *TINY]
    assert main(argv) == 0
    before = (out / "metrics.json").read_bytes()
    _fails(capsys, argv, "--overwrite", str(out))
    assert (out / "metrics.json").read_bytes() == before
    _fails(capsys, argv + ["--resume"], "finished", "--overwrite")
    assert (out / "metrics.json").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0


def test_resume_without_checkpoint(tmp_path, capsys, medmnist_dir):
    argv = [
        "finetune",
        "--data-root",
        str(medmnist_dir),
        "--out",
        str(tmp_path / "o"),
        *TINY,
        "--resume",
    ]
    _fails(capsys, argv, "--resume", "checkpoint")


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(
    tmp_path, capsys, medmnist_dir
):
    from riftune.runs import checkpoint_file as checkpoint

    out = tmp_path / "run"
    argv = ["finetune", "--data-root", str(medmnist_dir), "--out", str(out), *TINY,
            "--epochs", "3", "--lr", "1e30", "--head-lr", "1e30", "--grad-clip", "0",
            "--checkpoint-every", "1"]  # fmt: skip
    line = _fails(capsys, argv, "non-finite", "step", code=1)
    assert not (out / "metrics.json").exists()
    latest = checkpoint.latest_valid_checkpoint(out / "checkpoints")
    assert latest is not None, line
    tensors, _ = checkpoint.load_checkpoint(latest)
    assert all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())


def test_out_of_memory_names_the_flag_to_lower(tmp_path, capsys, medmnist_dir, monkeypatch):
    import torch

    from riftune.engine import step

    def out_of_memory(self, *args):  # a CUDA OOM cannot happen on this CPU machine
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(step.TrainStep, "__call__", out_of_memory)
    argv = ["finetune", "--data-root", str(medmnist_dir), "--out", str(tmp_path / "o"), *TINY]
    _fails(capsys, argv, "--batch-size", code=1)


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "riftune", "finetune", "--data", str(tmp_path / "x.npz"),
         "--out", str(tmp_path / "o"), "--debug"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    _fails(capsys, ["evaluate", "--run", str(tmp_path)], str(tmp_path))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["finetune", "bench"])
def test_device_cuda_without_a_gpu(tmp_path, capsys, command):
    argv = ["finetune", "--data", "breastmnist", "--out", str(tmp_path / "o"), *TINY]
    if command == "bench":
        argv = ["bench", "--skip", "reference,scaling"]
    _fails(capsys, [*argv, "--device", "cuda"], "--device cuda", "--device cpu")
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize(
    "bad",
    [
        ["--data", "missing/nothing.npz"],
        ["--data", "CORRUPT"],
        ["--backbone", "no_such_backbone"],
        ["--data", "csv:missing.csv"],
    ],
    ids=["missing-data", "corrupt-npz", "unknown-backbone", "missing-csv"],
)
def test_bad_input_found_before_training_leaves_no_run_folder(tmp_path, capsys, medmnist_dir, bad):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip file")
    bad = [str(corrupt) if arg == "CORRUPT" else arg for arg in bad]
    out = tmp_path / "o"
    argv = ["finetune", "--data-root", str(medmnist_dir), *TINY, "--out", str(out)]
    _fails(capsys, argv + bad)
    assert not out.exists()
    # the corrected command runs into the same --out without --overwrite
    assert main(argv) == 0
    assert (out / "metrics.json").is_file()


def test_out_naming_a_file_is_one_line(tmp_path, capsys, medmnist_dir):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    argv = ["finetune", "--data-root", str(medmnist_dir), *TINY, "--out", str(file)]
    _fails(capsys, argv, "is a file, not a run folder")
    assert file.read_text() == "keep me"


def test_argparse_errors_are_one_line_without_the_usage(capsys):
    for argv, needle in (
        (["finetune", "--lam", "x"], "argument --lam: invalid float value: 'x'"),
        (["finetune", "--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
        (["finetune", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ([], "the following arguments are required: COMMAND"),
    ):
        _fails(capsys, argv, needle)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--micro-batches", "3"], "--micro-batches 3 does not divide --batch-size 8"),
        (["--micro-batches", "2", "--reg", "rift"], "uses the statistics of the whole batch"),
        (["--micro-batches", "2", "--no-freeze-bn"], "needs frozen BatchNorm"),
    ],
    ids=["indivisible", "batch-statistics", "train-mode-batchnorm"],
)
def test_micro_batches_that_cannot_split_the_batch_exactly(
    tmp_path, capsys, medmnist_dir, flags, needle
):
    out = tmp_path / "o"
    argv = ["finetune", "--data-root", str(medmnist_dir), *TINY, "--out", str(out), *flags]
    _fails(capsys, argv, needle)
    assert not out.exists()


def test_micro_batches_must_be_a_multiple_of_the_process_count():
    model = torch.nn.Linear(2, 2)
    assert local_micro_batches(TrainingConfig(micro_batches=4), model, world_size=2) == 2
    with pytest.raises(UserError, match="not a multiple of the 2 processes"):
        local_micro_batches(TrainingConfig(micro_batches=3), model, world_size=2)
