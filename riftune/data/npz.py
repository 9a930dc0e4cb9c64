"""Read and validate a MedMNIST-format ``.npz`` file, never unpickling anything.

The format: keys ``{train,val,test}_images`` (uint8, N×H×W or N×H×W×1 or N×H×W×3) and
``{train,val,test}_labels`` (integers, shape (N,) or (N, 1); or (N, L) of 0/1, L ≥ 2, for a
multi-label task such as ChestMNIST's 14 findings). The file is opened with
``numpy.load(..., allow_pickle=False)``: an archive holding object arrays (pickled Python
objects, which could run code when loaded) is refused before anything is unpickled.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from riftune.data.splits import SPLITS
from riftune.errors import UserError

_LARGEST_LABEL = 2**53  # larger floats are not exact integers; larger ints are no class count
KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


def read_npz(
    path: Path, splits: Sequence[str] = SPLITS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load the splits of a MedMNIST-format ``.npz`` and check their arrays.

    Args:
        path: the ``.npz`` file.
        splits: the splits to read (all three by default); the others' arrays are never
            loaded, only their keys required.

    Returns:
        split name → (images, labels): images uint8 as stored (N, H, W) or (N, H, W, C) with
        C in {1, 3}; labels int64, shape (N,), non-negative, or multi-label 0/1 targets
        (N, L).

    Raises:
        UserError: a missing path, a file that is not an ``.npz``, object arrays, missing
            keys, wrong image dtype or shape, non-integer or negative labels, multi-label
            targets other than 0/1, image/label count mismatch, or an empty split.
    """
    if not path.exists():
        raise UserError(f"data path {path} does not exist; check the path or --data-root")
    if not path.is_file():
        raise UserError(f"data path {path} is not a file; give a .npz file")
    with open_npz(path) as archive:
        missing = [key for key in KEYS if key not in archive.files]
        if missing:
            raise UserError(
                f"{path} lacks the keys {', '.join(missing)}; a MedMNIST .npz holds {', '.join(KEYS)}"
            )
        arrays = {
            key: read_array(archive, key, path) for key in KEYS if key.split("_")[0] in splits
        }
    return {
        split: _check_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, path)
        for split in splits
    }


#: what Python's zipfile raises on a damaged archive or one it cannot read (NotImplementedError:
#: a zip version or compression method it does not support)
_ZIP_ERRORS = (OSError, EOFError, NotImplementedError, zipfile.BadZipFile)


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The ``.npz`` archive at ``path``, opened without unpickling (a context manager).

    Raises:
        UserError: the file is no zip archive (or one of a zip version or compression method
            Python's zipfile does not read), or holds a single ``.npy`` array.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (*_ZIP_ERRORS, ValueError) as err:
        raise UserError(
            f"{path} is not a valid .npz file ({type(err).__name__}); give a MedMNIST-format .npz"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds a single array, not an .npz archive with keys {KEYS}")
    return archive


def read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """The array ``key`` of ``archive``; its header's size checked before NumPy allocates it.

    Raises:
        UserError: a header declaring more than the member holds, an object array, or a
            damaged member.
    """
    _check_declared_size(archive, key, path)
    try:
        return archive[key]
    except MemoryError as err:
        raise UserError(
            f"{path}: {key} does not fit in memory; use a smaller image size variant of the file"
        ) from err
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise UserError(
                f"{path}: {key} is an object array (pickled Python objects), refused for "
                "safety; store plain numeric arrays"
            ) from err
        raise UserError(f"{path}: {key} cannot be read ({err}); re-create the file") from err
    except (*_ZIP_ERRORS, zlib.error) as err:
        raise UserError(f"{path}: {key} is corrupted ({type(err).__name__}); re-create it") from err


def _check_declared_size(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> None:
    """Refuse a member whose header declares more data than the member holds, before NumPy
    allocates the declared shape (a corrupted header can ask for terabytes).

    The bytes declared are ``prod(shape) · itemsize``; the bytes held are the member's
    uncompressed size in the zip directory minus its header. (A size the directory itself
    overstates fails later, when decompression ends early.)
    """
    member = f"{key}.npy"
    try:
        info = archive.zip.getinfo(member)
        with archive.zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            held = info.file_size - handle.tell()
    except KeyError:  # stored without the .npy suffix: NumPy reads it as a raw array
        return
    except (*_ZIP_ERRORS, ValueError, SyntaxError, zlib.error) as err:
        raise UserError(f"{path}: {key} has an unreadable header ({err}); re-create it") from err
    declared = math.prod(shape) * dtype.itemsize
    if declared > held:
        raise UserError(
            f"{path}: {key} declares shape {shape} of {dtype} ({declared} bytes) but holds "
            f"{max(held, 0)} bytes; the file is truncated or corrupted, re-create it"
        )


def _check_split(
    images: np.ndarray, labels: np.ndarray, split: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8:
        raise UserError(
            f"{path}: {split}_images has dtype {images.dtype}; expected uint8 pixels 0..255"
        )
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise UserError(
            f"{path}: {split}_images has shape {images.shape}; expected N×H×W (grayscale) or "
            "N×H×W×3 (RGB)"
        )
    if 0 in images.shape[1:]:
        raise UserError(f"{path}: {split}_images has shape {images.shape}; an image needs pixels")
    if labels.ndim not in (1, 2):
        raise UserError(
            f"{path}: {split}_labels has shape {labels.shape}; expected (N,), (N, 1) or, "
            "multi-label, (N, L)"
        )
    multilabel = labels.ndim == 2 and labels.shape[1] > 1
    if not multilabel:
        labels = labels.reshape(-1)
    if len(images) != len(labels):
        raise UserError(
            f"{path}: {split} has {len(images)} images but {len(labels)} labels; "
            "they must match one to one"
        )
    if len(images) == 0:
        raise UserError(f"{path}: the {split} split is empty; every split needs images")
    values = to_class_indices(labels, f"{path}: {split}_labels")
    if multilabel and values.max(initial=0) > 1:
        raise UserError(
            f"{path}: {split}_labels has shape {labels.shape} (multi-label) but holds "
            f"{values.max()}; multi-label targets are 0 or 1"
        )
    return images, values


def to_class_indices(labels: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64 class indices, refusing non-integer, non-finite or negative values.

    Raises:
        UserError: a label that is not a non-negative integer.
    """
    if labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == np.uint64 and labels.size and labels.max() > _LARGEST_LABEL:
            raise UserError(f"{what} holds values too large for class indices ({labels.max()})")
        values = labels.astype(np.int64)
    elif np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError(f"{what} holds non-integer values; labels must be class indices")
        if labels.size and np.abs(labels).max() > _LARGEST_LABEL:
            raise UserError(
                f"{what} holds values too large for class indices ({np.abs(labels).max():g})"
            )
        values = labels.astype(np.int64)
    else:
        raise UserError(f"{what} has dtype {labels.dtype}; labels must be integer class indices")
    if values.size and values.min() < 0:
        raise UserError(f"{what} holds negative values ({values.min()}); labels must be 0..K-1")
    return values
