"""Nested training state (model, optimizer, scheduler, scaler, RNG states) as named tensors and
a JSON skeleton, and back: what a checkpoint file stores (:mod:`riftune.runs.checkpoint_file`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_TENSOR, _NDARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"
_TAGS = frozenset({_TENSOR, _NDARRAY, _TUPLE, _DICT})


def flatten_state(state: Mapping[Any, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split nested state into named tensors and a JSON skeleton.

    Handles dicts (any hashable keys of the kinds below, order kept), lists, tuples, tensors,
    NumPy arrays, ``None``, bools, ints, floats and strings: e.g. ``state_dict()`` of a model,
    ``torch.optim`` optimizer, LR scheduler or ``torch.amp.GradScaler``, and
    :func:`riftune.runs.rng_state.capture_rng_state`. Tensors are named by their path
    (``optimizer/state/0/exp_avg``), detached, moved to the CPU and made contiguous. In the
    skeleton a tensor becomes ``{"__tensor__": name}``, an array ``{"__ndarray__": name}``, a
    tuple ``{"__tuple__": [...]}`` and a dict whose keys are not all strings (or that uses one
    of these tags as a key) ``{"__dict__": [[key, value], ...]}``. NumPy scalars are stored as
    Python numbers.

    Args:
        state: The nested state.

    Returns:
        ``(tensors, meta)`` with ``meta = {"state": skeleton}``; add other JSON keys to
        ``meta`` freely before saving.

    Raises:
        ValueError: A value of another type, naming its path.
    """
    tensors: dict[str, torch.Tensor] = {}

    def store(value: torch.Tensor, path: str) -> str:
        name = path.encode("utf-8", "backslashreplace").decode("utf-8") or "tensor"
        unique, n = name, 1
        while unique in tensors:
            unique, n = f"{name}~{n}", n + 1
        tensors[unique] = value
        return unique

    def encode(obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if isinstance(obj, np.bool_ | np.integer | np.floating):
            return obj.item()
        if isinstance(obj, torch.Tensor):
            return {_TENSOR: store(obj, path)}
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise ValueError(f"cannot store the object array at {path!r}; use numeric arrays")
            return {_NDARRAY: store(torch.from_numpy(np.ascontiguousarray(obj)), path)}
        if isinstance(obj, list):
            return [encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {_TUPLE: [encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj) and not _TAGS & obj.keys():
                return {k: encode(v, f"{path}/{k}" if path else k) for k, v in obj.items()}
            return {
                _DICT: [
                    [encode(k, f"{path}/<key>"), encode(v, f"{path}/{k}" if path else str(k))]
                    for k, v in obj.items()
                ]
            }
        raise ValueError(
            f"cannot store {type(obj).__name__} at {path!r} in a checkpoint; use tensors, "
            "arrays, numbers, strings, None, lists, tuples or dicts"
        )

    skeleton = encode(dict(state), "")
    return storable_tensors(tensors), {"state": skeleton}


def unflatten_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_state`: rebuild the nested state from ``meta["state"]``.

    Args:
        tensors: The named tensors (as returned by :func:`load_checkpoint`).
        meta: Metadata holding the ``"state"`` skeleton.

    Returns:
        The nested state; arrays come back as NumPy arrays, tensors on the CPU.

    Raises:
        ValueError: The skeleton is missing or names a tensor that is not there.
    """
    if "state" not in meta:
        raise ValueError(
            "checkpoint meta has no 'state' skeleton; it was not made by flatten_state"
        )

    def tensor(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"checkpoint lacks the tensor {name!r} named in its metadata")
        return tensors[name]

    def decode(obj: Any) -> Any:
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if obj.keys() == {_TENSOR}:
            return tensor(obj[_TENSOR])
        if obj.keys() == {_NDARRAY}:
            return tensor(obj[_NDARRAY]).numpy()
        if obj.keys() == {_TUPLE}:
            return tuple(decode(v) for v in obj[_TUPLE])
        if obj.keys() == {_DICT}:
            return {decode(k): decode(v) for k, v in obj[_DICT]}
        return {k: decode(v) for k, v in obj.items()}

    return decode(meta["state"])


def storable_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, dense, contiguous CPU tensors, each owning its whole storage (no sharing)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out
