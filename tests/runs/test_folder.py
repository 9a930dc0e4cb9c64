"""Claiming a run folder: what may start where, and what --overwrite removes."""

from __future__ import annotations

import pytest

from riftune.errors import UserError
from riftune.runs.folder import RunDir, check_claim, claim


def _finished(root):
    run = RunDir(root)
    claim(run, resume=False, overwrite=False)
    run.config.write_text("a: 1\n")
    (run.checkpoints / "step-00000001.safetensors").write_bytes(b"x")
    run.metrics.write_text("{}")
    return run


def test_a_new_folder_is_claimed_and_gets_its_checkpoint_folder(tmp_path):
    run = RunDir(tmp_path / "new")
    check_claim(run, resume=False, overwrite=False)
    assert not run.root.exists()  # checking touches nothing
    claim(run, resume=False, overwrite=False)
    assert run.checkpoints.is_dir()


def test_finished_and_unfinished_runs_are_refused_without_the_right_flag(tmp_path):
    run = _finished(tmp_path / "done")
    with pytest.raises(UserError, match="already holds a finished run; pass --overwrite"):
        check_claim(run, resume=False, overwrite=False)
    with pytest.raises(UserError, match="nothing to resume"):
        check_claim(run, resume=True, overwrite=False)
    run.metrics.unlink()
    with pytest.raises(UserError, match="unfinished run; pass --resume"):
        check_claim(run, resume=False, overwrite=False)
    check_claim(run, resume=True, overwrite=False)  # a checkpoint to resume from
    empty = RunDir(tmp_path / "empty")
    with pytest.raises(UserError, match="holds no checkpoint"):
        check_claim(empty, resume=True, overwrite=False)


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    run = _finished(tmp_path / "done")
    (run.root / "notes.txt").write_text("mine")
    claim(run, resume=False, overwrite=True)
    assert (run.root / "notes.txt").read_text() == "mine"
    assert not run.metrics.exists() and not run.config.exists()
    assert run.checkpoints.is_dir() and not any(run.checkpoints.iterdir())


def test_out_naming_a_file_is_refused(tmp_path):
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a run folder"):
        check_claim(RunDir(file), resume=False, overwrite=True)
    assert file.read_text() == "x"
