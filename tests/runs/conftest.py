"""What the checkpoint tests share: exact structural equality of two states, and a round trip
through a real checkpoint file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from riftune.runs.checkpoint_file import load_checkpoint, save_checkpoint
from riftune.runs.state_tree import flatten_state, unflatten_state


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
