"""A write that fails part-way (a full disk) keeps the previous good file and says so.

The failure is injected at the operating-system calls the writers make: ``os.write`` of the
temporary file fails with ENOSPC after half its bytes are on disk, or ``os.fsync`` /
``os.replace`` fails. After each, the previous file must be byte-for-byte intact (and, for a
checkpoint, still verify and still be the one resume picks), no temporary file may be left,
and the error must name what failed.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch

from riftune.cli import main
from riftune.errors import UserError
from riftune.runs import checkpoint_file as ckpt
from riftune.runs import folder as run_dir
from riftune.runs.folder import write_json_atomic

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _is_temporary(fd_or_path) -> bool:
    path = os.readlink(f"/proc/self/fd/{fd_or_path}") if isinstance(fd_or_path, int) else fd_or_path
    return str(path).endswith(".tmp")


def _inject(monkeypatch, where: str) -> None:
    """Make the write of a temporary file fail with ENOSPC at ``where``."""
    real = {name: getattr(os, name) for name in ("write", "fsync", "replace")}

    def write(fd, data):
        if not _is_temporary(fd):
            return real["write"](fd, data)
        real["write"](fd, bytes(data)[: max(1, len(data) // 2)])  # half of it reaches the disk
        raise ENOSPC

    def fsync(fd):
        if _is_temporary(fd):
            raise ENOSPC
        return real["fsync"](fd)

    def replace(src, dst):
        if _is_temporary(src):
            raise ENOSPC
        return real["replace"](src, dst)

    monkeypatch.setattr(os, where, {"write": write, "fsync": fsync, "replace": replace}[where])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((64, 64), value), "step": torch.tensor([int(value)])}


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
@pytest.mark.parametrize("name", ["step-000001", "step-000002"])  # replace it / add a newer one
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, where, name
):
    good = ckpt.save_checkpoint(tmp_path, "step-000001", _state(1.0), {"step": 1})
    before = good.read_bytes()
    with monkeypatch.context() as patch:
        _inject(patch, where)
        with pytest.raises(UserError, match="No space left on device") as caught:
            ckpt.save_checkpoint(tmp_path, name, _state(2.0), {"step": 2})
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert good.read_bytes() == before
    tensors, meta = ckpt.load_checkpoint(good)
    assert meta == {"step": 1} and torch.equal(tensors["weight"], _state(1.0)["weight"])
    assert ckpt.latest_valid_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # nothing half-written


def test_a_failed_checkpoint_write_is_one_user_error_line(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, "step-000001", _state(1.0), {"step": 1})
    _inject(monkeypatch, "write")
    with pytest.raises(UserError, match=r"step-000002\.safetensors.*No space left on device"):
        ckpt.save_checkpoint(tmp_path, "step-000002", _state(2.0), {"step": 2})


class _HalfWriter(io.TextIOWrapper):
    """A text file whose first write puts half the text on disk, then fails with ENOSPC."""

    def write(self, text: str) -> int:
        super().write(text[: len(text) // 2])
        self.flush()
        raise ENOSPC


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_failed_metrics_write_keeps_the_previous_file_and_says_why(tmp_path, monkeypatch, where):
    path = tmp_path / "metrics.json"
    write_json_atomic({"test": {"auc": 0.75}}, path)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        if where == "write":  # json goes through a buffered text file, not os.write
            patch.setattr(
                run_dir.os,
                "fdopen",
                lambda fd, mode: _HalfWriter(io.FileIO(fd, "w"), encoding="utf-8"),
            )
        else:
            _inject(patch, where)
        with pytest.raises(UserError) as caught:
            write_json_atomic({"test": {"auc": 0.5}, "padding": "x" * 10_000}, path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "No space left on device" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_unserializable_metrics_never_touch_the_disk(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic({"ok": 1}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, path)
    assert path.read_text() == '{\n  "ok": 1\n}\n' and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_full_disk_at_metrics_json_fails_the_run_with_one_line(
    tmp_path, medmnist_dir, monkeypatch, capsys
):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    out = tmp_path / "run"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "metrics.json":
            raise ENOSPC
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code = main(["finetune", "--data", "breastmnist", "--epochs", "1", "--img-size", "28",
                 "--shots", "8", "--batch-size", "8", "--eval-batch-size", "64",
                 "--landscape-images", "8", "--hessian-iters", "2", "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {out / 'metrics.json'} (No space left on device)")
    assert "\n" not in err
    assert not (out / "metrics.json").exists() and _leftovers(out) == []
    assert ckpt.latest_valid_checkpoint(out / "checkpoints") is not None  # --resume can continue
