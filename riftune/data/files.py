"""Datasets stored as image files: the table the folder and CSV sources produce, and decoding.

Each image is decoded once, at load, and resized straight to S × S (bilinear with
antialiasing, PIL's filter; the whole field of view is kept, so a non-square image is
stretched rather than cropped). Decoding runs on a thread pool (PIL releases the GIL while
decoding and resizing); JPEGs are decoded at a reduced scale when that is still ≥ S.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from riftune.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
# what PIL raises on a damaged file: OSError (truncated, unidentified), ValueError (a bad
# chunk or size), SyntaxError, EOFError, struct.error (short headers), and a bomb refusal
_CORRUPT = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass
class FileSplits:
    """Image files and labels per split, before decoding.

    Attributes:
        paths: split name → image files.
        labels: split name → class index of each file. Shape: (N,) int64.
        class_names: the name of each class index, when the source names classes.
        groups: split name → the group of each file (a patient), when the source has groups.
    """

    paths: dict[str, list[Path]]
    labels: dict[str, np.ndarray]
    class_names: list[str] | None
    groups: dict[str, np.ndarray] | None = None


def decode_images(paths: Sequence[Path], size: int, threads: int | None = None) -> np.ndarray:
    """Decode and resize image files to size × size uint8 arrays.

    Grayscale files (modes 1, L, LA, 16-bit) stay one channel; everything else becomes RGB
    (alpha dropped). If any file is RGB, grayscale ones are repeated to three channels.

    Args:
        paths: the image files.
        size: the output side S.
        threads: decoding threads; default ``min(8, cpu count)``.

    Returns:
        Shape: (N, S, S) uint8 when every file is grayscale, else (N, S, S, 3).

    Raises:
        UserError: a file that cannot be decoded.
    """
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda path: _decode(path, size), paths))
    if any(array.ndim == 3 for array in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    return np.stack(arrays)


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (size, size))
            image = _to_8bit(image, path)
            return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    except UserError:
        raise
    except _CORRUPT as err:
        raise UserError(f"cannot read image {path} ({err}); remove or replace the file") from err


def _to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """An 8-bit grayscale (L) or RGB version of ``image``."""
    if image.mode not in _GRAY_MODES:
        return image.convert("RGB")
    if image.mode in ("1", "L", "LA"):
        return image.convert("L")
    pixels = np.asarray(image, dtype=np.int64)  # 16- or 32-bit integer grayscale
    if pixels.min() < 0 or pixels.max() > 65535:
        raise UserError(f"image {path} has pixel values outside 0..65535; convert it to 8 bit")
    if pixels.max() > 255:
        pixels = np.rint(pixels / 257.0)
    return Image.fromarray(pixels.astype(np.uint8))
