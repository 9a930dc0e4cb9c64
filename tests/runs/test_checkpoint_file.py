"""Checkpoint files (riftune/runs/checkpoint_file.py): atomic writes, corruption detection, no
unpickling, the latest valid checkpoint, rotation.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from riftune.errors import UserError
from riftune.runs import checkpoint_file as checkpoint
from riftune.runs.checkpoint_file import (
    BEST,
    CheckpointWarning,
    latest_valid_checkpoint,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from riftune.runs.state_tree import unflatten_state

from .conftest import assert_same

REPO = Path(__file__).resolve().parents[2]


def small_checkpoint(directory, name="step-1", value=0.0, **meta):
    tensors = {"w": torch.full((3, 4), value), "b": torch.arange(5)}
    return save_checkpoint(directory, name, tensors, {"value": value, **meta})


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path):
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_tensors_and_meta_round_trip_bit_exactly(tmp_path):
    base = torch.randn(6, 4)
    tensors = {
        "f32": base,
        "transposed": base.t(),  # non-contiguous view
        "slice": base[2:4],  # shares storage with f32
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "f64": base.double(),
        "i64": torch.arange(-3, 3),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": base > 0,
        "scalar": torch.tensor(7.5),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    meta = {"epoch": 3, "note": "ü", "nested": {"a": [1, 2.5, None, True]}}
    path = save_checkpoint(tmp_path / "ckpts", "step-000010", tensors, meta)
    assert path == tmp_path / "ckpts" / "step-000010.safetensors"
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert_same(dict(sorted(tensors.items())), dict(sorted(loaded.items())))
    assert not loaded["param"].requires_grad
    # Still a plain safetensors file that other tools can read.
    assert safetensors.torch.load_file(path).keys() == tensors.keys()


def test_save_rejects_bad_names_and_meta(tmp_path):
    with pytest.raises(ValueError, match="name"):
        save_checkpoint(tmp_path, "../escape", {}, {})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path, "ok", {}, {"x": object()})
    with pytest.raises(ValueError, match="not a tensor"):
        save_checkpoint(tmp_path, "ok", {"x": np.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.safetensors")
    assert_one_line_naming(err, tmp_path / "nope.safetensors")
    foreign = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, foreign)
    with pytest.raises(UserError, match="not a riftune checkpoint") as err:
        load_checkpoint(foreign)
    assert_one_line_naming(err, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError):
        load_checkpoint(text)


@pytest.mark.parametrize("failure", ["half-written", "fsync", "replace"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    previous = small_checkpoint(tmp_path, value=1.0)
    before = previous.read_bytes()

    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def fail(*args):
        raise OSError(5, "Input/output error")

    if failure == "half-written":
        monkeypatch.setattr(checkpoint, "_write_all", half_then_fail)
    else:
        monkeypatch.setattr(os, failure, fail)
    with pytest.raises(UserError, match="cannot write checkpoint"):
        small_checkpoint(tmp_path, value=2.0)
    monkeypatch.undo()
    assert previous.read_bytes() == before
    assert load_checkpoint(previous)[1]["value"] == 1.0
    assert os.listdir(tmp_path) == [previous.name]


def test_failed_first_save_leaves_no_file(tmp_path, monkeypatch):
    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_all", half_then_fail)
    with pytest.raises(UserError, match="cannot write checkpoint"):
        small_checkpoint(tmp_path)
    assert os.listdir(tmp_path) == []


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
import torch
import riftune.runs.checkpoint_file as ck
directory = Path(sys.argv[1])
ck.save_checkpoint(directory, "step-1", {"w": torch.zeros(4096)}, {"value": 1})
def die_halfway(fd, data):
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
ck._write_all = die_halfway
ck.save_checkpoint(directory, "step-2", {"w": torch.ones(4096)}, {"value": 2})
"""


def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (tmp_path / "step-2.safetensors").exists()
    assert (tmp_path / ".step-2.safetensors.tmp").exists()  # the partial write, hidden
    assert latest_valid_checkpoint(tmp_path) == tmp_path / "step-1.safetensors"
    assert load_checkpoint(tmp_path / "step-1.safetensors")[1] == {"value": 1}
    # The run resumes, saves again and rotation clears the leftover temporary file.
    small_checkpoint(tmp_path, "step-2")
    rotate_checkpoints(tmp_path, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-1.safetensors", "step-2.safetensors"]


def test_truncated_checkpoints_are_refused(tmp_path):
    path = small_checkpoint(tmp_path)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    for cut in sorted({0, 1, 7, 8, 9, header_end - 1, header_end, header_end + 1, len(data) - 1}):
        bad = tmp_path / f"cut-{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(UserError, match="corrupted") as err:
            load_checkpoint(bad)
        assert_one_line_naming(err, bad)


def test_every_flipped_byte_is_detected(tmp_path):
    path = small_checkpoint(tmp_path, value=0.5, step=12)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for position in range(len(data)):
        for mask in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[position] ^= mask
            bad.write_bytes(flipped)
            with pytest.raises(UserError) as err:
                load_checkpoint(bad)
            assert_one_line_naming(err, bad)


def test_consistently_edited_header_is_detected(tmp_path):
    # Change a value in the header without breaking the JSON: only the checksum notices.
    path = small_checkpoint(tmp_path, value=0.5)
    data = path.read_bytes()
    edited = data.replace(b'\\"value\\": 0.5', b'\\"value\\": 9.5')
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    with pytest.raises(UserError, match="checksum"):
        load_checkpoint(path)


class _Exploit:
    """Unpickling this creates a directory: stands in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("kind", ["torch-zip.pt", "raw-pickle.pth"])
def test_pickle_exploit_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / kind
    if kind.endswith(".pt"):
        torch.save({"weight": torch.ones(2), "payload": _Exploit(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UserError, match="refusing to load") as err:
        load_checkpoint(path)
    assert_one_line_naming(err, path)
    assert not marker.exists()
    # The file is a real exploit: an unsafe load does run its code.
    if kind.endswith(".pt"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.is_dir()


def test_plain_state_dict_pt_file_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    tensors, meta = load_checkpoint(path)
    assert_same(model.state_dict(), unflatten_state(tensors, meta))
    torch.save(torch.ones(2), tmp_path / "bare.pt")
    with pytest.raises(UserError, match="not a dict"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable PyTorch file") as err:
        load_checkpoint(tmp_path / "truncated.pt")
    assert_one_line_naming(err, tmp_path / "truncated.pt")


def corrupt(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(data)
    return bytes(data)


def test_latest_valid_orders_by_save_sequence_not_name_or_mtime(tmp_path):
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    assert latest_valid_checkpoint(tmp_path) is None
    small_checkpoint(tmp_path, "step-9")
    newest = small_checkpoint(tmp_path, "step-10")
    os.utime(tmp_path / "step-9.safetensors", (2e9, 2e9))  # a later mtime must not matter
    small_checkpoint(tmp_path, BEST)  # the best checkpoint is never picked for resume
    assert latest_valid_checkpoint(tmp_path) == newest
    resaved = small_checkpoint(tmp_path, "step-9")  # saving again makes it the newest
    assert latest_valid_checkpoint(tmp_path) == resaved


def test_latest_valid_skips_corrupted_newest_without_touching_it(tmp_path):
    good = small_checkpoint(tmp_path, "step-1")
    bad = small_checkpoint(tmp_path, "step-2")
    bad_bytes = corrupt(bad)
    truncated = small_checkpoint(tmp_path, "step-3")
    truncated.write_bytes(truncated.read_bytes()[:5])  # header unreadable: cannot be ordered
    with pytest.warns(CheckpointWarning) as record:
        assert latest_valid_checkpoint(tmp_path) == good
    messages = " ".join(str(w.message) for w in record)
    assert str(bad) in messages and str(truncated) in messages
    assert bad.read_bytes() == bad_bytes and truncated.exists()
    bad.unlink()
    truncated.unlink()
    good.write_bytes(good.read_bytes()[:-1])
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(tmp_path) is None


def test_rotation_keeps_last_k_and_best(tmp_path):
    deleted = []
    for step in range(1, 6):
        small_checkpoint(tmp_path, f"step-{step}", value=float(step))
        if step == 2:
            small_checkpoint(tmp_path, BEST, value=2.0)
        deleted += rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == [f"step-{s}.safetensors" for s in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path)) == [
        "best.safetensors",
        "step-4.safetensors",
        "step-5.safetensors",
    ]
    assert load_checkpoint(tmp_path / "best.safetensors")[1]["value"] == 2.0
    with pytest.raises(ValueError, match="keep"):
        rotate_checkpoints(tmp_path, keep=0)


def test_rotation_never_deletes_the_last_good_checkpoint(tmp_path):
    for step in (1, 2, 3):
        small_checkpoint(tmp_path, f"step-{step}")
    bad_bytes = corrupt(tmp_path / "step-3.safetensors")
    with pytest.warns(CheckpointWarning):
        deleted = rotate_checkpoints(tmp_path, keep=1)
    assert deleted == [tmp_path / "step-1.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["step-2.safetensors", "step-3.safetensors"]
    assert (tmp_path / "step-3.safetensors").read_bytes() == bad_bytes
    corrupt(tmp_path / "step-2.safetensors")
    with pytest.warns(CheckpointWarning):
        assert rotate_checkpoints(tmp_path, keep=1) == []  # nothing valid: delete nothing
    assert len(os.listdir(tmp_path)) == 2
