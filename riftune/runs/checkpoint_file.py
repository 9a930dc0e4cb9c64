"""Checkpoints on disk: one verified, atomically written safetensors file per checkpoint.

Format (``<directory>/<name>.safetensors``): a plain safetensors file whose header metadata holds

- ``riftune_format``: ``"riftune-checkpoint/1"``;
- ``riftune_seq``: the save order within the directory (1 + the largest seq found there), which
  orders checkpoints whatever their names or file times;
- ``riftune_meta``: the caller's ``meta`` as JSON;
- ``riftune_sha256``: the SHA-256 of the whole file as written with these 64 hex digits set to
  ``"0"``, so every byte of the file (length prefix, header, tensor data) is covered.

Keeping the checksum inside the file makes a checkpoint a single file, committed by a single
``os.replace``. The checksum detects truncation and corruption, not deliberate forgery: anyone
who can write the file can recompute it. Tensors are only ever decoded by safetensors; ``.pt`` /
``.pth`` files given by a user go through ``torch.load(..., weights_only=True)``. Nothing here
unpickles arbitrary objects.

Nested training state (model, optimizer, scheduler, scaler, RNG states) becomes
``(tensors, meta)`` with :func:`flatten_state` and comes back with :func:`unflatten_state`
(:mod:`riftune.runs.state_tree`, re-exported here).
Progress checkpoints are every file but ``best``; :func:`latest_valid_checkpoint` picks the
newest one that verifies and :func:`rotate_checkpoints` prunes old ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from riftune.errors import UserError
from riftune.runs.state_tree import flatten_state, storable_tensors, unflatten_state

FORMAT = "riftune-checkpoint/1"
SUFFIX = ".safetensors"
BEST = "best"
"""Name of the best-so-far checkpoint: never rotated, never picked for resume."""

_FORMAT_KEY = "riftune_format"
_SEQ_KEY = "riftune_seq"
_META_KEY = "riftune_meta"
_SHA_KEY = "riftune_sha256"
_SHA_PLACEHOLDER = "0" * 64
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TORCH_SUFFIXES = (".pt", ".pth")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it does not verify (it is left on disk untouched)."""


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(
    directory: Path, name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``<directory>/<name>.safetensors`` atomically, with its checksum.

    The file is written to a hidden temporary file in the same directory and fsynced, then
    renamed onto the final name with ``os.replace``, and the directory is fsynced. A crash at any
    point leaves either the previous file or the new one under the final name, never a partial
    one. A file of the same name is replaced.

    Args:
        directory: Folder of the checkpoints (created if missing).
        name: Checkpoint name: letters, digits, ``.``, ``_``, ``-``; e.g. ``step-000120`` or
            :data:`BEST`.
        tensors: Tensors to store, any device; they are stored dense, contiguous, on the CPU.
        meta: JSON-serializable metadata (e.g. the skeleton from :func:`flatten_state` plus
            counters). Non-finite floats are written as Python's ``json`` does.

    Returns:
        The path of the checkpoint.

    Raises:
        ValueError: On a bad name, a non-tensor value or metadata that is not JSON-serializable.
        UserError: The file could not be written (e.g. the disk is full); no partial file is
            left and earlier checkpoints are untouched.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad checkpoint name {name!r}; use letters, digits, '.', '_' and '-'")
    try:
        meta_json = json.dumps(meta)
    except TypeError as err:
        raise ValueError(
            f"checkpoint meta is not JSON-serializable ({err}); pass state through flatten_state"
        ) from err
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        _FORMAT_KEY: FORMAT,
        _SEQ_KEY: str(_next_seq(directory)),
        _META_KEY: meta_json,
        _SHA_KEY: _SHA_PLACEHOLDER,
    }
    payload = memoryview(safetensors.torch.save(storable_tensors(tensors), metadata=metadata))
    start = _checksum_offset(payload, _SHA_PLACEHOLDER)
    if start is None:
        raise RuntimeError("safetensors wrote an unexpected header; cannot place the checksum")
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    end = start + len(digest)

    final = directory / f"{name}{SUFFIX}"
    tmp = _temp_path(final)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in (payload[:start], digest, payload[end:]):
                _write_all(fd, memoryview(chunk))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_directory(directory)
    except OSError as err:  # a full disk, a quota, a vanished folder: the old files stay
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise UserError(
            f"cannot write checkpoint {final} ({err.strerror or err}); the previous checkpoints "
            "are unchanged; free space, then rerun with --resume"
        ) from err
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


def checkpoint_path(directory: Path, name: str) -> Path:
    """Where :func:`save_checkpoint` puts the checkpoint ``name`` in ``directory``."""
    return Path(directory) / f"{name}{SUFFIX}"


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; tensors come back on the CPU.

    A ``.safetensors`` file must be a riftune checkpoint whose checksum matches. A ``.pt`` /
    ``.pth`` file is read with ``torch.load(..., weights_only=True)`` (tensors and plain
    containers only) and returned as :func:`flatten_state` would store its content.

    Args:
        path: The checkpoint file.

    Returns:
        ``(tensors, meta)`` as given to :func:`save_checkpoint`.

    Raises:
        UserError: The file is missing, truncated, corrupted, not a riftune checkpoint, or (for
            ``.pt``/``.pth``) holds Python objects that would have to be unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    if path.suffix.lower() in _TORCH_SUFFIXES:
        content = _torch_load_weights_only(path)
        if not isinstance(content, Mapping):
            raise UserError(
                f"{path} holds a {type(content).__name__}, not a dict of tensors; "
                "save a state_dict instead"
            )
        return flatten_state(content)
    if path.suffix.lower() != SUFFIX:
        raise UserError(
            f"{path} is not a checkpoint file; use a riftune {SUFFIX} checkpoint or a .pt/.pth file"
        )
    data = path.read_bytes()
    header = _verified_header(data, path)
    try:
        tensors = safetensors.torch.load(data)
        meta = json.loads(header["__metadata__"][_META_KEY])
    except Exception as err:  # checksum matched, so the writer itself produced a bad file
        raise _corrupted(path, f"unreadable content: {err}") from err
    return tensors, meta


def latest_valid_checkpoint(directory: Path) -> Path | None:
    """The newest progress checkpoint (any name but :data:`BEST`) that verifies.

    Newest means the largest save sequence number, read from each header. Checkpoints that do
    not verify are skipped with a :class:`CheckpointWarning` naming the file and the reason;
    they are never deleted or modified.

    Args:
        directory: Folder of the checkpoints.

    Returns:
        The path, or ``None`` when the folder holds no valid progress checkpoint.
    """
    for path, problem in _newest_first(Path(directory)):
        if problem is None:
            try:
                _verified_header(path.read_bytes(), path)
            except UserError as err:
                problem = str(err)
            else:
                return path
        warnings.warn(f"skipping {problem}", CheckpointWarning, stacklevel=2)
    return None


def rotate_checkpoints(directory: Path, keep: int = 2) -> list[Path]:
    """Delete old progress checkpoints, keeping the ``keep`` newest and the newest valid one.

    Only checkpoints older than the newest valid one are deleted, so a corrupted newest
    checkpoint never costs the previous good one; corrupted checkpoints newer than it, files
    whose header cannot be read and :data:`BEST` are left alone. With no valid checkpoint,
    nothing is deleted. Leftover temporary files from interrupted saves are removed.

    Args:
        directory: Folder of the checkpoints.
        keep: How many of the newest progress checkpoints to keep (at least 1).

    Returns:
        The deleted checkpoint paths.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    directory = Path(directory)
    for tmp in directory.glob(f".*{SUFFIX}.tmp"):
        tmp.unlink()
    newest_valid = latest_valid_checkpoint(directory)
    if newest_valid is None:
        return []
    ordered = [path for path, problem in _newest_first(directory) if problem is None]
    older = ordered[ordered.index(newest_valid) + 1 :]
    deleted = [path for path in older if path not in ordered[:keep]]
    for path in deleted:
        path.unlink()
    if deleted:
        _fsync_directory(directory)
    return deleted


# ----------------------------------------------------------------------------- internals


def _write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to the file descriptor (``os.write`` may write less)."""
    while data:
        data = data[os.write(fd, data) :]


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header(data: bytes | memoryview) -> dict[str, Any]:
    """Parse the safetensors header; ValueError says what is wrong."""
    if len(data) < 8:
        raise ValueError(f"only {len(data)} bytes, shorter than the 8-byte header length")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(f"header length {size} does not fit in a file of {len(data)} bytes")
    try:
        header = json.loads(bytes(data[8 : 8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"unreadable header ({err})") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get(_FORMAT_KEY) != FORMAT:
        raise ValueError(f"no {FORMAT} metadata, so not a riftune checkpoint")
    if not all(isinstance(metadata.get(k), str) for k in (_SEQ_KEY, _META_KEY, _SHA_KEY)):
        raise ValueError("incomplete riftune metadata")
    return header


def _checksum_offset(data: bytes | memoryview, stored: str) -> int | None:
    """Offset of the checksum digits in the header, if they occur there exactly once."""
    (size,) = struct.unpack("<Q", data[:8])
    header = bytes(data[8 : 8 + size])
    needle = f'"{_SHA_KEY}":"{stored}"'.encode("ascii")
    if header.count(needle) != 1:
        return None
    return 8 + header.index(needle) + len(needle) - len(stored) - 1


def _verified_header(data: bytes, path: Path) -> dict[str, Any]:
    """The header of a checkpoint whose checksum matches; UserError otherwise."""
    view = memoryview(data)
    try:
        header = _header(view)
    except ValueError as err:
        raise _corrupted(path, str(err)) from err
    stored = header["__metadata__"][_SHA_KEY]
    start = _checksum_offset(view, stored) if re.fullmatch("[0-9a-f]{64}", stored) else None
    if start is None:
        raise _corrupted(path, "malformed checksum field")
    digest = hashlib.sha256(view[:start])
    digest.update(_SHA_PLACEHOLDER.encode("ascii"))
    digest.update(view[start + len(stored) :])
    if digest.hexdigest() != stored:
        raise _corrupted(path, "SHA-256 checksum mismatch, the file was truncated or altered")
    return header


def _corrupted(path: Path, reason: str) -> UserError:
    return UserError(
        f"checkpoint {path} is corrupted or not a riftune checkpoint ({reason}); "
        "move it aside and resume from an earlier checkpoint"
    )


def _read_seq(path: Path) -> int:
    """Save sequence number from the header alone (unverified); ValueError if unreadable."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER:
            raise ValueError(f"header length {size} is implausible")
        data = prefix + f.read(size)
    return int(_header(data)["__metadata__"][_SEQ_KEY])


def _next_seq(directory: Path) -> int:
    seqs = []
    for path in directory.glob(f"*{SUFFIX}"):
        with contextlib.suppress(ValueError, OSError):
            seqs.append(_read_seq(path))
    return max(seqs, default=0) + 1


def _newest_first(directory: Path) -> Iterator[tuple[Path, str | None]]:
    """Progress checkpoints, newest first, each with ``None`` or why its header is unreadable.

    Files with an unreadable header cannot be ordered; they come first, so that callers that
    stop at the first valid checkpoint still report them.
    """
    ordered: list[tuple[int, str, Path]] = []
    unreadable: list[tuple[Path, str]] = []
    paths = directory.glob(f"*{SUFFIX}") if directory.is_dir() else []
    for path in paths:
        if path.stem == BEST or not path.is_file():
            continue
        try:
            ordered.append((_read_seq(path), path.name, path))
        except (ValueError, OSError) as err:
            unreadable.append((path, f"checkpoint {path} ({err})"))
    yield from sorted(unreadable)
    for _, _, path in sorted(ordered, reverse=True):
        yield path, None


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with its refusals turned into one-line UserErrors."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = f" ({detail.group(1).strip()[:160]})" if detail else ""
        raise UserError(
            f"refusing to load {path}: it is not a plain file of tensors{reason} and unpickling it "
            "could run arbitrary code; re-save it as safetensors or as a state_dict of tensors"
        ) from err
    except Exception as err:
        raise UserError(
            f"{path} is not a readable PyTorch file ({type(err).__name__}: {str(err)[:160]}); "
            "check the path or re-save it"
        ) from err


__all__ = [
    "BEST",
    "CheckpointWarning",
    "checkpoint_path",
    "flatten_state",
    "latest_valid_checkpoint",
    "load_checkpoint",
    "rotate_checkpoints",
    "save_checkpoint",
    "unflatten_state",
]
