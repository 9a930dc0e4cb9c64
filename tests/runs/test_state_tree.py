"""Nested state (riftune/runs/state_tree.py): training states and arbitrary trees round trip
exactly through a checkpoint file, and a restored run continues bit-identically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune.runs.checkpoint_file import load_checkpoint, save_checkpoint
from riftune.runs.rng_state import capture_rng_state, restore_rng_state
from riftune.runs.state_tree import flatten_state, unflatten_state

from .conftest import assert_same, round_trip


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
