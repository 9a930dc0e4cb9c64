"""Fuzzed inputs: mutated datasets and checkpoints load cleanly or fail with one UserError line.

Each property starts from a valid input (a MedMNIST-format npz, a CSV table with its image
files, an image folder, a riftune checkpoint) and mutates it: truncation, flipped bits,
arrays of other dtypes and shapes, missing keys, headers declaring huge dimensions, and
(for checkpoints) headers rewritten and re-signed so that the checksum passes. Required of
each example: a clean load or :class:`riftune.errors.UserError` with a one-line message,
never another exception; no file in the input's folder created, changed or removed; within
hypothesis' deadline (no hang), and for npz files under 64 MB of NumPy allocations (a
header declaring terabytes is refused before allocating them).

Cases per CI run (``max_examples``): 60 npz byte mutations, 60 npz array mutations, 60 CSV
mutations, 40 image-folder mutations, 80 checkpoint byte mutations, 60 re-signed checkpoint
headers, plus the fixed cases below: 360 generated cases, well under a minute on one core.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import struct
import tempfile
import tracemalloc
import warnings
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from riftune.data import load_dataset
from riftune.errors import UserError
from riftune.runs import checkpoint_file as ckpt

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    deadline=timedelta(seconds=10),  # a hang fails the example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same cases on every run, so CI results are reproducible
)
SPLITS = ("train", "val", "test")
KEYS = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]


# ------------------------------------------------------------------------------- helpers


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def _scratch():
    with tempfile.TemporaryDirectory(prefix="riftune-fuzz-") as name:
        yield Path(name)


def _clean_or_user_error(load, folder: Path, max_numpy_mb: float | None = None):
    """Run ``load()``; return its result or None after a one-line UserError. Any other
    exception fails the example; so does a change to the files in ``folder``."""
    before = _snapshot(folder)
    if max_numpy_mb is not None:
        tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL and the checkpoint reader may warn
            result = load()
    except UserError as err:
        assert "\n" not in str(err) and str(err).strip(), repr(str(err))
        result = None
    finally:
        if max_numpy_mb is not None:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < max_numpy_mb * 2**20, f"allocated {peak / 2**20:.0f} MB"
    assert _snapshot(folder) == before, "loading changed the input's folder"
    return result


def _check_splits(data, num_images: int | None = None) -> None:
    """A clean load: three non-empty splits of (3, S, S) float images and in-range labels."""
    for split in SPLITS:
        dataset = getattr(data, split)
        assert len(dataset) > 0
        image, label, index = dataset[0]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert torch.isfinite(image).all()
        assert 0 <= int(label) < data.num_classes and int(index) == 0


# --------------------------------------------------------------------------------- npz


def _valid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, (4, 6, 6), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([[0], [1], [0], [1]], dtype=np.uint8)
    return arrays


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load_npz(path: Path):
    return load_dataset(str(path), img_size=8, download=False)


def test_the_unmutated_inputs_load():
    with _scratch() as folder:
        (folder / "data.npz").write_bytes(_npz_bytes(_valid_arrays()))
        _check_splits(_clean_or_user_error(lambda: _load_npz(folder / "data.npz"), folder))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_npz_with_mutated_bytes(data, mutate_bytes):
    raw = mutate_bytes(_npz_bytes(_valid_arrays()), data.draw)
    with _scratch() as folder:
        (folder / "data.npz").write_bytes(raw)
        loaded = _clean_or_user_error(lambda: _load_npz(folder / "data.npz"), folder, 64)
        if loaded is not None:
            _check_splits(loaded)


DTYPES = ["uint8", "int8", "uint16", "int64", "uint64", "float16", "float32", "float64", "bool",
          "complex64", "U3", "S2", "V4"]  # fmt: skip


@st.composite
def _array(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=5)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    count = int(np.prod(shape))
    if dtype.kind in "US":
        return np.array(draw(st.lists(st.text("ab1", max_size=2), min_size=count,
                                      max_size=count)) or [""], dtype=dtype)[:count].reshape(shape)  # fmt: skip
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _huge_header_member(shape: tuple[int, ...], dtype: str) -> bytes:
    """A .npy member whose header declares ``shape`` but that holds only 64 bytes."""
    header = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64)


@settings(FUZZ, max_examples=60)
@given(
    key=st.sampled_from(KEYS),
    change=st.sampled_from(["drop", "replace", "huge", "extra"]),
    array=_array(),
    huge=st.lists(st.integers(2**20, 2**40), min_size=1, max_size=4),
)
def test_npz_with_wrong_arrays_missing_keys_and_huge_dimensions(key, change, array, huge):
    arrays = _valid_arrays()
    with _scratch() as folder:
        path = folder / "data.npz"
        if change == "drop":
            del arrays[key]
        elif change in ("replace", "extra"):
            arrays[key if change == "replace" else "extra_key"] = array
        path.write_bytes(_npz_bytes(arrays))
        if change == "huge":
            with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as source:
                members = {name: source.read(name) for name in source.namelist()}
            members[f"{key}.npy"] = _huge_header_member(tuple(huge), "uint8")
            with zipfile.ZipFile(path, "w") as target:
                for name, content in members.items():
                    target.writestr(name, content)
        loaded = _clean_or_user_error(lambda: _load_npz(path), folder, 64)
        if change in ("drop", "huge"):
            assert loaded is None
        if loaded is not None:
            _check_splits(loaded)


def test_npz_object_arrays_are_refused_without_unpickling():
    arrays = _valid_arrays()
    arrays["train_labels"] = np.array([0, 1, {"x": 1}, 1], dtype=object)
    with _scratch() as folder:
        path = folder / "data.npz"
        np.savez(path, **arrays)
        with pytest.raises(UserError, match="object array"):
            _load_npz(path)


# ---------------------------------------------------------------------- csv and folders


def _write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(1)
    (folder / "img").mkdir()
    names = []
    for i in range(count):
        name = f"img/{i}.png"
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def _valid_csv(names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "split"])
    for i, name in enumerate(names):
        writer.writerow([name, ["benign", "malignant"][i % 2], SPLITS[(i // 2) % 3]])
    return buffer.getvalue()


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_csv_with_mutated_text_and_bytes(data, mutate_bytes):
    with _scratch() as folder:
        names = _write_images(folder, 12)
        text = _valid_csv(names)
        if data.draw(st.booleans()):  # structural edits: cells, quotes, separators, lines
            pos = data.draw(st.integers(0, len(text)))
            inserted = data.draw(st.text(alphabet=',"\n\r\x00;é{}1-', max_size=6))
            cut = data.draw(st.integers(0, 8))
            raw = (text[:pos] + inserted + text[pos + cut :]).encode("utf-8")
        else:
            raw = mutate_bytes(text.encode("utf-8"), data.draw)
        (folder / "labels.csv").write_bytes(raw)
        spec = f"csv:{folder / 'labels.csv'}"
        loaded = _clean_or_user_error(lambda: load_dataset(spec, img_size=8), folder)
        if loaded is not None:
            _check_splits(loaded)


def _valid_imagefolder(root: Path) -> list[Path]:
    rng = np.random.default_rng(2)
    files = []
    for split in ("train", "val", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i, suffix in enumerate((".png", ".jpg")):
                path = root / split / name / f"{i}{suffix}"
                Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)).save(path)
                files.append(path)
    return files


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height pixels, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))  # fmt: skip


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_image_folders_with_damaged_images(data, mutate_bytes):
    with _scratch() as folder:
        root = folder / "dataset"
        files = _valid_imagefolder(root)
        victim = data.draw(st.sampled_from(files))
        kind = data.draw(st.sampled_from(["bytes", "huge", "empty"]))
        if kind == "bytes":
            victim.write_bytes(mutate_bytes(victim.read_bytes(), data.draw))
        elif kind == "huge":
            side = data.draw(st.sampled_from([(70_000, 70_000), (2**31 - 1, 1), (1, 2**31 - 1)]))
            victim.write_bytes(_huge_png(*side))
        else:
            victim.write_bytes(b"")
        loaded = _clean_or_user_error(
            lambda: load_dataset(f"imagefolder:{root}", img_size=8), folder
        )
        if kind != "bytes":
            assert loaded is None
        if loaded is not None:
            _check_splits(loaded)


# -------------------------------------------------------------------------- checkpoints


def _good_checkpoint(folder: Path, name: str = "step-000002") -> Path:
    state = {"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 2, "rng": (1, 2)}
    tensors, meta = ckpt.flatten_state(state)
    return ckpt.save_checkpoint(folder, name, tensors, meta)


def _assert_same_content(loaded) -> None:
    tensors, meta = loaded
    state = ckpt.unflatten_state(tensors, meta)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.arange(12.0).reshape(3, 4))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_checkpoints_with_mutated_bytes(data, mutate_bytes):
    with _scratch() as folder:
        older = _good_checkpoint(folder, "step-000001")
        newest = _good_checkpoint(folder)
        original = newest.read_bytes()
        mutated = mutate_bytes(original, data.draw)
        newest.write_bytes(mutated)
        loaded = _clean_or_user_error(lambda: ckpt.load_checkpoint(newest), folder)
        assert (loaded is None) == (mutated != original)  # the checksum covers every byte
        if loaded is not None:
            _assert_same_content(loaded)
        picked = _clean_or_user_error(lambda: ckpt.latest_valid_checkpoint(folder), folder)
        assert picked == (newest if mutated == original else older)


def _resign(header: dict, body: bytes) -> bytes:
    """A file with this header and body whose riftune checksum matches."""
    header = json.loads(json.dumps(header))
    metadata = header.setdefault("__metadata__", {})
    if isinstance(metadata, dict):
        metadata["riftune_sha256"] = "0" * 64
    text = json.dumps(header, separators=(",", ":")).encode()
    data = struct.pack("<Q", len(text)) + text + body
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(metadata, dict):
        data = data.replace(
            b'"riftune_sha256":"' + b"0" * 64, b'"riftune_sha256":"' + digest.encode()
        )
    return data


def _header_and_body(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def test_re_signing_an_unchanged_header_keeps_the_checkpoint_valid():
    with _scratch() as folder:  # so the re-signed cases below reach past the checksum
        path = _good_checkpoint(folder)
        path.write_bytes(_resign(*_header_and_body(path)))
        _assert_same_content(ckpt.load_checkpoint(path))


HEADER_CHANGES = ["dtype", "shape", "data_offsets", "drop_tensor_key", "drop_meta_key", "meta_json",
                  "body"]  # fmt: skip


@settings(FUZZ, max_examples=60)
@given(
    field=st.sampled_from(HEADER_CHANGES),
    value=st.one_of(
        st.sampled_from(["F32", "I64", "BOOL", "F8_E4M3", "XYZ", "", None]),
        st.lists(st.integers(-2, 2**40), max_size=4),
        st.integers(-1, 2**62),
        st.text(max_size=8),
    ),
)
def test_checkpoints_with_re_signed_wrong_headers(field, value):
    with _scratch() as folder:
        path = _good_checkpoint(folder)
        header, body = _header_and_body(path)
        entry = header["model/w"]
        meta = header["__metadata__"]
        if field in ("dtype", "shape", "data_offsets"):
            entry[field] = value
        elif field == "drop_tensor_key":
            entry.pop(str(value) if str(value) in entry else "dtype")
        elif field == "drop_meta_key":
            meta.pop(str(value) if str(value) in meta else "riftune_meta")
        elif field == "meta_json":
            meta["riftune_meta"] = json.dumps(value)[: max(1, len(json.dumps(value)) - 1)]
        else:
            body = body[: len(body) // 2] if isinstance(value, int) else body + bytes(64)
        path.write_bytes(_resign(header, body))
        _clean_or_user_error(lambda: ckpt.load_checkpoint(path), folder)
        _clean_or_user_error(lambda: ckpt.latest_valid_checkpoint(folder), folder)


def test_a_deeply_nested_checkpoint_header_is_a_user_error():
    with _scratch() as folder:
        _good_checkpoint(folder, "step-000001")
        nested = b"[" * 100_000 + b"]" * 100_000
        bad = folder / "step-000009.safetensors"
        bad.write_bytes(struct.pack("<Q", len(nested)) + nested)
        with pytest.raises(UserError):
            ckpt.load_checkpoint(bad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ckpt.latest_valid_checkpoint(folder) == folder / "step-000001.safetensors"


def test_a_checkpoint_of_a_torch_file_with_flipped_bytes_is_a_user_error():
    with _scratch() as folder:
        path = folder / "weights.pt"
        torch.save({"w": torch.ones(8)}, path)
        raw = bytearray(path.read_bytes())
        for pos in range(0, len(raw), 97):
            raw[pos] ^= 0x5A
        path.write_bytes(bytes(raw))
        assert _clean_or_user_error(lambda: ckpt.load_checkpoint(path), folder) is None


# ---------------------------------------------- the findings of this fuzzing, kept fixed


def _npz_with(**changes) -> bytes:
    return _npz_bytes({**_valid_arrays(), **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_images": np.zeros((4, 0, 6), np.uint8)}, "an image needs pixels"),
        ({"train_labels": np.array([0, 1, 2**62, 1])}, r"classes \[2, 3, .*\] and more"),
        ({"train_labels": np.array([0, 1, 0, 1e300])}, "too large for class indices"),
        ({"val_labels": np.array([0, 1, 0, 2**64 - 1], np.uint64)}, "too large"),
    ],
)
def test_npz_findings(changes, message):
    with _scratch() as folder:
        (folder / "data.npz").write_bytes(_npz_with(**changes))
        with pytest.raises(UserError, match=message):
            _load_npz(folder / "data.npz")


@pytest.mark.parametrize("field", [6, 10])
def test_an_npz_zipfile_cannot_read_is_a_user_error(field):
    """A central directory entry asking for zip version 10.9 (offset 6) or an unknown
    compression method (offset 10): zipfile raises NotImplementedError, on opening or on
    reading the member."""
    raw = bytearray(_npz_bytes(_valid_arrays()))
    central = raw.index(b"PK\x01\x02")
    raw[central + field] = 109
    with _scratch() as folder:
        (folder / "data.npz").write_bytes(bytes(raw))
        with pytest.raises(UserError, match=r"not a valid \.npz|unreadable header|corrupted"):
            _load_npz(folder / "data.npz")


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        ("img/0.png,1" + "0" * 200_000, "", "cannot be parsed"),  # a cell over csv's limit
        ("img/0.png,\udcff", "", "not UTF-8"),
        ("0,0\n1,1", "?template=img/{}{0}.png", "listed images not found"),  # no str.format
        ("0,0\n1,1", "?template=img/{}{x.y}.png", "listed images not found"),
        ("a" * 5000 + ",0", "", "listed images not found"),  # a name the system refuses
        ('"img/0\n.png",0', "", r"img/0\\n\.png"),  # the message stays one line
        (
            "image,label,split\nimg/0.png,0,train\nimg/1.png,99999999999,train\n"
            "img/0.png,0,val\nimg/1.png,0,test",
            "",
            r"and more \(99999999998\)",
        ),
    ],
)
def test_csv_findings(rows, options, message):
    with _scratch() as folder:
        _write_images(folder, 2)
        text = ("" if rows.startswith("image,") else "image,label\n") + rows + "\n"
        (folder / "t.csv").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(UserError, match=message) as caught:
            load_dataset(f"csv:{folder / 't.csv'}{options}", img_size=8)
        assert "\n" not in str(caught.value)


def test_a_png_with_a_short_header_chunk_is_a_user_error():
    ihdr = struct.pack(">II", 6, 6)[:5]  # PIL raises ValueError("Truncated IHDR chunk")
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with _scratch() as folder:
        root = folder / "dataset"
        files = _valid_imagefolder(root)
        files[0].write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + b"IHDR" + ihdr + crc)
        with pytest.raises(UserError, match=f"cannot read image {files[0]}"):
            load_dataset(f"imagefolder:{root}", img_size=8)
