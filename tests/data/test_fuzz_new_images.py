"""Fuzzed ``predict --data`` inputs: new images load cleanly or fail with one UserError line.

``predict`` reads its images with :func:`riftune.data.load_new_images`, not the training
readers that ``test_fuzz_inputs.py`` covers: an ``.npz`` of any ``*_images`` arrays (labels
optional), an image folder (class subfolders optional) and a CSV table of image files. Each
property starts from a valid input and mutates it: truncation, flipped bits, overwritten
runs, arrays of other dtypes and shapes, headers declaring huge dimensions, damaged images,
edited CSV cells. Required of each example: images (N, 1 or 3, 8, 8) or a one-line
:class:`~riftune.errors.UserError`, never another exception; no file in the input's folder
created, changed or removed; within hypothesis' deadline; for npz files under 64 MB of NumPy
allocations.

Cases per CI run (``max_examples``): 50 npz byte mutations, 50 npz array mutations, 30
image-folder mutations and 40 CSV mutations: 170.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import tracemalloc
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from riftune.data import load_new_images
from riftune.errors import UserError

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run
)
CLASSES = ["malignant", "benign"]
DTYPES = ["uint8", "int8", "uint16", "int64", "float32", "float64", "bool", "U3", "V4"]


def _load(spec: str, folder: Path, max_numpy_mb: float | None = None):
    """``load_new_images(spec)``: the images, or None after a one-line UserError; the input's
    folder must be unchanged and NumPy's allocations under ``max_numpy_mb``."""
    before = _snapshot(folder)
    if max_numpy_mb is not None:
        tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL may warn
            images = load_new_images(spec, 8, CLASSES, len(CLASSES))
    except UserError as err:
        assert "\n" not in str(err) and str(err).strip(), repr(str(err))
        images = None
    finally:
        if max_numpy_mb is not None:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < max_numpy_mb * 2**20, f"allocated {peak / 2**20:.0f} MB"
    assert _snapshot(folder) == before, "reading changed the input's folder"
    if images is not None:
        assert images.pixels.shape[1] in (1, 3) and images.pixels.shape[2:] == (8, 8)
        assert images.pixels.dtype == torch.uint8
        assert images.labels is None or len(images.labels) == len(images.pixels)
    return images


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _images(seed: int, count: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 6, 6), dtype=np.uint8)


# --------------------------------------------------------------------------------- npz


def _valid_arrays() -> dict[str, np.ndarray]:
    return {"test_images": _images(0), "test_labels": np.array([[0], [1], [0], [1]], np.uint8)}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load_npz(raw: bytes):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as name:
        (Path(name) / "new.npz").write_bytes(raw)
        return _load(str(Path(name) / "new.npz"), Path(name), 64)


def test_the_unmutated_inputs_load():
    loaded = _load_npz(_npz_bytes(_valid_arrays()))
    assert loaded.pixels.shape == (4, 1, 8, 8) and loaded.labels.tolist() == [0, 1, 0, 1]


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_npz_with_mutated_bytes(data, mutate_bytes):
    _load_npz(mutate_bytes(_npz_bytes(_valid_arrays()), data.draw))


@st.composite
def _array(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=5)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    count = int(np.prod(shape))
    if dtype.kind == "U":
        return np.full(shape, "ab", dtype=dtype)
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _huge_header_member(shape: tuple[int, ...]) -> bytes:
    """A .npy member whose header declares ``shape`` of uint8 but that holds only 64 bytes."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64)


@settings(FUZZ, max_examples=50)
@given(
    key=st.sampled_from(["test_images", "test_labels", "val_images", "other"]),
    change=st.sampled_from(["drop", "replace", "huge"]),
    array=_array(),
    huge=st.lists(st.integers(2**20, 2**40), min_size=1, max_size=4),
)
def test_npz_with_wrong_arrays_and_huge_dimensions(key, change, array, huge):
    arrays = _valid_arrays()
    if change == "drop":
        arrays.pop(key, None)
    else:
        arrays[key] = array
    raw = _npz_bytes(arrays)
    if change == "huge":
        with zipfile.ZipFile(io.BytesIO(raw)) as source:
            members = {name: source.read(name) for name in source.namelist()}
        members[f"{key}.npy"] = _huge_header_member(tuple(huge))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as target:
            for name, content in members.items():
                target.writestr(name, content)
        raw = buffer.getvalue()
    loaded = _load_npz(raw)
    if change == "huge" and key.endswith("_images"):
        assert loaded is None


# ---------------------------------------------------------------------- folders and csv


def _write_folder(root: Path) -> list[Path]:
    files = []
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for j, suffix in enumerate((".png", ".jpg")):
            path = root / name / f"{j}{suffix}"
            Image.fromarray(_images(i * 2 + j, 1)[0]).save(path)
            files.append(path)
    return files


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_image_folders_with_damaged_images(data, mutate_bytes):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as name:
        root = Path(name) / "new"
        files = _write_folder(root)
        victim = data.draw(st.sampled_from(files))
        if data.draw(st.booleans()):
            victim.write_bytes(mutate_bytes(victim.read_bytes(), data.draw))
        else:
            victim.write_bytes(b"")
        loaded = _load(str(root), Path(name))
        if loaded is not None:
            assert loaded.labels.tolist() == [1, 1, 0, 0]  # benign/ sorts first


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_csv_tables_with_mutated_text_and_bytes(data, mutate_bytes):
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as name:
        folder = Path(name)
        files = _write_folder(folder / "img")
        rows = [f"{p.relative_to(folder)},{p.parent.name}" for p in files]
        text = "image,label\n" + "\n".join(rows) + "\n"
        if data.draw(st.booleans()):  # structural edits: cells, quotes, separators, lines
            pos = data.draw(st.integers(0, len(text)))
            inserted = data.draw(st.text(alphabet=',"\n\r\x00;é{}1-', max_size=6))
            raw = (text[:pos] + inserted + text[pos + data.draw(st.integers(0, 8)) :]).encode()
        else:
            raw = mutate_bytes(text.encode(), data.draw)
        (folder / "new.csv").write_bytes(raw)
        _load(f"csv:{folder / 'new.csv'}", folder)


def test_the_unmutated_folder_and_table_load(tmp_path):
    files = sorted(_write_folder(tmp_path / "img"))  # the folder's order: benign/ first
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in files]
    (tmp_path / "new.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    from_folder = _load(str(tmp_path / "img"), tmp_path)
    from_table = _load(f"csv:{tmp_path / 'new.csv'}", tmp_path)
    assert from_folder.labels.tolist() == from_table.labels.tolist() == [1, 1, 0, 0]
    assert torch.equal(from_folder.pixels, from_table.pixels)
