"""The typed run configuration: flags, YAML files, old run folders and the Python entry point."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import riftune
from riftune.cli import main
from riftune.config import RunConfig, finetune_parser, read_config, run_config_from_args
from riftune.errors import UserError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
COMMITTED_CONFIGS = sorted((REPO / "benchmarks" / "results").rglob("config.yaml"))

# every flag of `riftune finetune` before typed configs (git show 1a9f34c:riftune/config.py)
OLD_FLAGS = [
    "--adapter-dim", "--adapter-scale", "--amp", "--augment", "--backbone", "--batch-size",
    "--checkpoint-every", "--data", "--data-root", "--debug", "--delta-attention-images",
    "--delta-layers", "--device", "--epochs", "--eval-batch-size", "--freeze-bn", "--grad-clip",
    "--head-lr", "--hessian-iters", "--img-size", "--l2sp-beta-ratio", "--lam",
    "--landscape-images", "--lora-alpha", "--lora-dropout", "--lora-rank", "--lp-epochs", "--lr",
    "--method", "--no-pretrained", "--no-rift-normalize", "--out", "--overwrite", "--quiet",
    "--reference", "--reg", "--resume", "--rift-eigh-every", "--rift-match",
    "--rift-mean-weight", "--rift-momentum", "--rift-normalize", "--rift-q", "--rift-q-lr",
    "--rift-q-rank", "--rift-reference", "--rift-stats", "--seed", "--sharpness-rho",
    "--sharpness-steps", "--shots", "--transfer-data", "--transfer-shots", "--vpt-mode",
    "--vpt-tokens", "--warmup-epochs", "--weight-decay",
]  # fmt: skip


def _config(*flags: str) -> RunConfig:
    return run_config_from_args(finetune_parser().parse_args(list(flags)))


def test_every_flag_of_the_old_parser_still_exists():
    known = {o for action in finetune_parser()._actions for o in action.option_strings}
    assert not set(OLD_FLAGS) - known


def test_committed_run_folders_load_and_round_trip():
    assert len(COMMITTED_CONFIGS) > 400
    for path in COMMITTED_CONFIGS:
        config = read_config(path)
        assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict(), path
        if config.regularizer.name == "none":
            assert config.to_dict()["regularizer"] == {"name": "none"}, path


def test_an_old_flat_config_equals_the_flags_it_was_run_with():
    old = REPO / "benchmarks/results/cpu_grid/freeze_bn/runs/pneumoniamnist/full"
    stored = read_config(old / "rift[paired,optimal]/lam1/seed0/config.yaml")
    flags = (
        "--data pneumoniamnist --shots 200 --img-size 28 --epochs 5 --freeze-bn "
        "--hessian-iters 0 --transfer-data breastmnist --reg rift --lam 1 --rift-match paired "
        "--rift-q optimal --lr 1e-4 --no-augment "  # the defaults of then, pinned in the grid file
        "--channels-last off"  # what every run before the option did
    )
    assert stored.to_dict() == _config(*flags.split()).to_dict()


def test_a_run_without_regularizer_holds_no_regularizer_options():
    written = _config("--reg", "none", "--rift-q", "learned", "--lam", "3").to_dict()
    assert written["regularizer"] == {"name": "none"}
    assert written["method"] == {"name": "full"}
    lora = _config("--method", "lora", "--reg", "cka").to_dict()
    assert lora["method"] == {"name": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0}
    assert lora["regularizer"] == {"name": "cka", "lam": 1.0, "reference": "teacher"}
    # learned-Q options appear only with learned Q, with their resolved default
    rift = _config("--reg", "rift", "--rift-q", "learned").to_dict()["regularizer"]
    assert (
        rift["q_rank"] == 64 and "q_rank" not in _config("--reg", "rift").to_dict()["regularizer"]
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--epochs 0", "--epochs 0: must be > 0"),
        ("--lam nan", "--lam nan: must be a finite number >= 0"),
        ("--checkpoint-every -1", "--checkpoint-every -1: must be >= 0"),
        ("--hessian-iters -2", "--hessian-iters -2: must be >= 0"),
        ("--reg rift --rift-momentum 1.5", "--reg rift: --rift-momentum 1.5: must be in (0, 1]"),
        ("--reg rift --rift-q-rank 64", "--reg rift: --rift-q-rank applies to --rift-q learned"),
        (
            "--reg rift --rift-q learned --rift-q-rank 3",
            "--reg rift: --rift-q-rank 3: must be even and >= 2",
        ),
        ("--method lora --lora-dropout 1", "--method lora: --lora-dropout 1.0: must be in [0, 1)"),
        ("--reg cka --method linear", "--reg cka has no effect with --method linear"),
        ("--resume --overwrite", "--resume and --overwrite contradict each other"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(flags, message):
    with pytest.raises(UserError) as error:
        _config(*flags.split())
    assert str(error.value).startswith(message), str(error.value)


def test_a_similarity_budget_without_a_similarity_is_refused_under_python_optimize():
    """The check is no ``assert``, which ``python -O`` would drop."""
    result = subprocess.run(
        [sys.executable, "-O", "-m", "riftune", "finetune", "--reg", "l2sp",
         "--target-similarity", "0.8", "--print-config"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(
        "error: --target-similarity needs a penalty that is a similarity of fixed scale; "
        "--reg l2sp's is not"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_the_python_form_is_checked_like_the_flags():
    with pytest.raises(UserError, match=re.escape("--rift-momentum 0.0: must be in")):
        RunConfig.from_dict({"regularizer": {"name": "rift", "momentum": 0.0}})
    with pytest.raises(UserError, match="unknown keys"):
        RunConfig.from_dict({"training": {"epoch": 3}})
    with pytest.raises(UserError, match="not a valid value"):
        RunConfig.from_dict({"training": {"epochs": "three"}})
    with pytest.raises(UserError, match="unknown regularizer 'rif'"):
        RunConfig.from_dict({"regularizer": {"name": "rif"}})


def test_config_file_with_flags_on_top_and_print_config(tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "regularizer": {"name": "rift", "lam": 2.0, "q": "identity"},
                "training": {"epochs": 3},
            }
        )
    )
    assert main(["finetune", "--config", str(file), "--epochs", "4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["epochs"] == 4  # the flag wins
    assert printed["regularizer"]["lam"] == 2.0 and printed["regularizer"]["q"] == "identity"
    # what --print-config shows is itself a valid --config
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert main(["finetune", "--config", str(again), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed
    # --method given on top of a file for another method drops that method's options
    file.write_text(yaml.safe_dump({"method": {"name": "lora", "rank": 4}}))
    assert _config("--config", str(file), "--method", "full").method.to_dict() == {"name": "full"}


TINY_RUN = {
    "data": {"data": "breastmnist", "img_size": 64, "shots": 10},
    "model": {"backbone": "timm:test_convnext", "pretrained": False},
    "method": {"name": "bitfit"},
    "training": {"epochs": 1, "batch_size": 8},
    "evaluation": {"landscape_images": 0},
    "output": {"quiet": True},
}


def test_python_entry_point_runs_a_configuration(tmp_path, medmnist_dir):
    run = {**TINY_RUN, "output": {"out": str(tmp_path / "run"), "quiet": True}}
    run["data"] = {**TINY_RUN["data"], "data_root": str(medmnist_dir)}
    metrics = riftune.finetune(run)
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    written = read_config(tmp_path / "run" / "config.yaml")
    assert written.to_dict() == RunConfig.from_dict(run).to_dict()
    # a YAML path is the same run
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({**run, "output": {"out": str(tmp_path / "b"), "quiet": True}}))
    assert riftune.finetune(file)["test"] == metrics["test"]


def test_a_run_folder_of_the_old_version_resumes_to_the_same_result(
    tmp_path, medmnist_dir, monkeypatch
):
    """tests/fixtures/v1_interrupted_run: a run written by the code before typed configs (flat
    config.yaml, its checkpoint after epoch 1 of 2). Resumed with its own config.yaml as
    --config (and --channels-last off, which that code did), it ends where that old code's
    uninterrupted run ended (v1_uninterrupted)."""
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v1_interrupted_run", run)
    argv = ["finetune", "--config", str(run / "config.yaml"), "--out", str(run), "--resume",
            "--quiet"]  # fmt: skip
    # it trained NCHW; today's default would store its convolutions channels last
    assert main(argv) == 2
    assert main([*argv, "--channels-last", "off"]) == 0
    expected = json.loads((FIXTURES / "v1_uninterrupted" / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        for key, value in expected[split].items():
            # power iterations and ascent steps amplify the float32 rounding of other thread
            # counts (CI runs one thread per test worker, like the fixture); the trained model is the same
            rel = 1e-4 if key in ("hessian_top_eig", "sharpness") else 1e-6
            assert got[split][key] == pytest.approx(value, rel=rel, abs=1e-9), (split, key)
    # the same steps to float32 rounding (another CPU's kernels may round the last bit apart)
    got_steps, expected_steps = (
        list(csv.DictReader(open(path)))
        for path in (run / "steps.csv", FIXTURES / "v1_uninterrupted" / "steps.csv")
    )
    assert [row.keys() for row in got_steps] == [row.keys() for row in expected_steps]
    for got_row, expected_row in zip(got_steps, expected_steps, strict=True):
        for key, value in expected_row.items():
            assert float(got_row[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-8), key
    # the old flat config.yaml stays as it was; evaluate rebuilds the run from it
    assert main(["evaluate", "--run", str(run), "--quiet"]) == 0
    evaluated = json.loads((run / "evaluation.json").read_text())
    assert evaluated["test"]["auc"] == got["test"]["auc"]


def test_a_run_folder_from_before_channels_last_reads_as_trained_without_it(tmp_path):
    """Runs written before --channels-last trained NCHW: their config.yaml lacks the option,
    and reading it must not turn today's default on for resume, evaluate or wise-ft."""
    written = _config("--data", "breastmnist").to_dict()
    assert written["training"].pop("channels_last") == "auto"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(written))
    assert read_config(path).training.channels_last == "off"
    written["training"]["channels_last"] = "on"
    path.write_text(yaml.safe_dump(written))
    assert read_config(path).training.channels_last == "on"
