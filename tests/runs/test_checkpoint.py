"""Checkpoints: atomic writes, corruption detection, no unpickling, rotation, exact resume state."""

from __future__ import annotations

import math
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune.errors import UserError
from riftune.runs import checkpoint_file as checkpoint
from riftune.runs.checkpoint_file import (
    BEST,
    CheckpointWarning,
    flatten_state,
    latest_valid_checkpoint,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
    unflatten_state,
)
from riftune.runs.rng_state import capture_rng_state, restore_rng_state

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def assert_same(a, b, where="state"):
    """Exact structural equality: container kinds, key order and types, dtypes, bits."""
    if isinstance(a, Mapping):
        assert isinstance(b, dict), where
        assert list(a.keys()) == list(b.keys()), where
        assert [type(k) for k in a] == [type(k) for k in b], where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and b.device.type == "cpu", where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        a_bytes = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(a_bytes, b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, float):
        assert type(b) is float, where
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        ), where
    else:
        assert type(a) is type(b) and a == b, where


def round_trip(state, directory):
    tensors, meta = flatten_state(state)
    path = save_checkpoint(directory, "step-1", tensors, meta)
    return unflatten_state(*load_checkpoint(path))


def small_checkpoint(directory, name="step-1", value=0.0, **meta):
    tensors = {"w": torch.full((3, 4), value), "b": torch.arange(5)}
    return save_checkpoint(directory, name, tensors, {"value": value, **meta})


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path):
    message = str(err.value)
    assert "\n" not in message and str(path) in message


# ------------------------------------------------------------------- save/load basics


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


# ---------------------------------------------------------------------- atomic writes


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


# ------------------------------------------------------------------ corruption detection


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


# ------------------------------------------------------------------------ untrusted files


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


# ---------------------------------------------------------------- latest valid, rotation


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


# -------------------------------------------------------------------- nested state


def _train(model, optimizer, scheduler, scaler, steps):
    """A few AMP-scaled AdamW steps on batches drawn from the global torch RNG."""
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(loss.item())
    return losses


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.8**step)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    return model, optimizer, scheduler, scaler


def _full_state(model, optimizer, scheduler, scaler):
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "position": {"epoch": 1, "step_in_epoch": 3},
    }


def test_training_states_round_trip_exactly(tmp_path):
    parts = _setup(0)
    _train(*parts, steps=3)
    state = _full_state(*parts)
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)
    assert set(state["optimizer"]["state"]) == {0, 1, 2, 3}
    assert state["scaler"]["scale"] > 0
    assert_same(state, round_trip(state, tmp_path))


def test_restored_run_continues_bit_identically(tmp_path):
    parts = _setup(0)
    _train(*parts, steps=3)
    tensors, meta = flatten_state(_full_state(*parts))
    path = save_checkpoint(tmp_path, "step-3", tensors, meta)
    expected_losses = _train(*parts, steps=4)

    resumed = _setup(1)  # different initial weights and RNG: everything must come from the file
    state = unflatten_state(*load_checkpoint(path))
    model, optimizer, scheduler, scaler = resumed
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    assert _train(*resumed, steps=4) == expected_losses
    for (name, p), q in zip(parts[0].named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert_same(parts[1].state_dict(), optimizer.state_dict())
    assert scheduler.get_last_lr() == parts[2].get_last_lr()


def test_flatten_names_tensors_by_path_and_escapes_tag_keys():
    state = {"model": {"layer.weight": torch.ones(1)}, "opt": {0: {"m": torch.zeros(1)}}}
    tensors, _ = flatten_state(state)
    assert set(tensors) == {"model/layer.weight", "opt/0/m"}
    tricky = {"__tensor__": "not a tensor", "x": [torch.ones(1), torch.ones(1)]}
    assert_same(tricky, unflatten_state(*flatten_state(tricky)))


def test_flatten_rejects_what_json_cannot_hold():
    with pytest.raises(ValueError, match="'a/b'"):
        flatten_state({"a": {"b": object()}})
    with pytest.raises(ValueError, match="object array"):
        flatten_state({"a": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="skeleton"):
        unflatten_state({}, {})


_keys = st.one_of(
    st.text(max_size=4),
    st.integers(-3, 3),
    st.none(),
    st.tuples(st.integers(0, 2), st.text(max_size=2)),
    st.sampled_from(["__tensor__", "__ndarray__", "__tuple__", "__dict__"]),
)
_dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool]


def _tensor(args):
    dtype, shape, seed = args
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 50).to(dtype)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.tuples(
        st.sampled_from(_dtypes), st.lists(st.integers(0, 3), max_size=3), st.integers(0, 9)
    ).map(_tensor),
    st.sampled_from([np.arange(4, dtype=np.uint32), np.eye(2), np.zeros((0, 2), np.int16)]),
)
_nested = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(_keys, children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(_keys, _nested, max_size=4))
def test_arbitrary_nested_state_round_trips(state):
    with tempfile.TemporaryDirectory() as directory:
        assert_same(state, round_trip(state, Path(directory)))


# ----------------------------------------------------------------------------- RNG


def _draws(generator):
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5).tolist()  # noqa: NPY002 (tests the global RNG)
        + np.random.randint(0, 1000, 3).tolist(),  # noqa: NPY002
        torch.randn(5).tolist(),
        torch.rand(4, generator=generator).tolist(),
    )


def test_rng_state_restores_identical_draws_after_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    sampler = torch.Generator().manual_seed(4)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.standard_normal(1)  # noqa: NPY002 (leaves a cached Gaussian in NumPy's)
    state = capture_rng_state({"sampler": sampler})
    expected = _draws(sampler)
    assert _draws(sampler) != expected  # the generators really moved on
    restored = round_trip({"rng": state}, tmp_path)["rng"]
    assert_same(state, restored)
    restore_rng_state(restored, {"sampler": sampler})
    assert _draws(sampler) == expected
    with pytest.raises(ValueError, match="'loader'"):
        restore_rng_state(restored, {"loader": torch.Generator()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_and_tensors_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    on_gpu = torch.Generator("cuda").manual_seed(6)
    state = capture_rng_state({"on_gpu": on_gpu})
    assert len(state["cuda"]) == torch.cuda.device_count()

    def draws():
        return torch.randn(4, device="cuda").cpu(), torch.rand(3, device="cuda", generator=on_gpu)

    expected = draws()
    weights = torch.arange(6.0, device="cuda")
    restored = round_trip({"rng": state, "weights": weights}, tmp_path)
    assert restored["weights"].device.type == "cpu"
    assert torch.equal(restored["weights"], weights.cpu())
    restore_rng_state(restored["rng"], {"on_gpu": on_gpu})
    again = draws()
    assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])
