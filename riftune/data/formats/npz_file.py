"""A MedMNIST-format ``.npz`` file: ``--data PATH.npz`` (or any path that is a file).

Splits: ``{train,val,test}_images`` and ``_labels`` (see :mod:`riftune.data.npz`); a relative
path missing from the working directory is also looked for in the MedMNIST search roots, and
a file named like a flag (``breastmnist_64.npz``) gets that flag's class names.

Images to classify: every ``<name>_images`` array (uint8, N×H×W or N×H×W×C, C ∈ {1, 3}), with
``<name>_labels`` when present; rows are keyed by ``split`` (``<name>``) and ``index``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from riftune.data import medmnist
from riftune.data.formats.base import (
    DataFormat,
    ImageRequest,
    NewImages,
    SplitRequest,
    check_options,
    register,
)
from riftune.data.npz import open_npz, read_array, read_npz
from riftune.data.splits import SPLITS, count_outputs
from riftune.data.stored import ImageArray, LabelledSplits
from riftune.data.transforms import resize, to_nchw
from riftune.errors import UserError


@register
class NpzFile(DataFormat):
    """A ``.npz`` path, or any other path that exists and is no image folder or table."""

    name = "npz"
    precedence = 3
    form = "a .npz path"
    help = "a MedMNIST-format .npz path"

    def claims(self, value: str) -> bool:
        looks_like_path = value.lower().endswith(".npz") or "/" in value or os.sep in value
        return looks_like_path or Path(value).expanduser().exists()

    def splits(
        self, location: str, options: dict[str, str], request: SplitRequest
    ) -> LabelledSplits:
        check_options(self, options, ())
        path = _find(location, request.data_root)
        known = medmnist.parse_flag(path.stem) if medmnist.is_flag(path.stem) else None
        return npz_splits(path, known, request.splits)

    def new_images(
        self, location: str, options: dict[str, str], request: ImageRequest
    ) -> NewImages:
        check_options(self, options, ())
        return npz_new_images(_find(location, request.data_root), request)


def _find(location: str, data_root: str | os.PathLike | None) -> Path:
    """The path as given; a relative one missing here is also looked for in the search roots."""
    path = Path(location).expanduser()
    if not path.exists() and not path.is_absolute():
        found = [root / path for root in medmnist.search_roots(data_root)]
        path = next((candidate for candidate in found if candidate.exists()), path)
    return path


def npz_splits(
    path: Path, known: medmnist.MedMNISTFile | None, splits: Sequence[str] = SPLITS
) -> LabelledSplits:
    """The checked ``splits`` of a MedMNIST-format file (the others' arrays are not loaded);
    ``known``'s name and class names if given.

    Raises:
        UserError: what :func:`~riftune.data.npz.read_npz` and
            :func:`~riftune.data.splits.count_outputs` refuse.
    """
    arrays = read_npz(path, splits)
    name = known.name if known else path.stem
    class_names = list(known.info.labels) if known else None
    labels = {split: arrays[split][1] for split in splits}
    return LabelledSplits(
        images={split: ImageArray(arrays[split][0]) for split in splits},
        labels=labels,
        num_classes=count_outputs(labels, len(class_names) if class_names else None, name),
        class_names=class_names,
        name=name,
        source=str(path),
    )


def npz_new_images(path: Path, request: ImageRequest) -> NewImages:
    """Every ``*_images`` array of ``path``, resized, with its ``*_labels`` when present.

    Raises:
        UserError: a missing or unreadable file, no or malformed image arrays, labels on some
            arrays only, or labels outside the run's classes.
    """
    if not path.is_file():
        raise UserError(f"--data {path} does not exist; check the path")
    with open_npz(path) as archive:
        arrays = {key: read_array(archive, key, path) for key in archive.files}
    names = [key.removesuffix("_images") for key in arrays if key.endswith("_images")]
    if not names:
        raise UserError(f"{path} has no *_images array (e.g. test_images); nothing to predict")
    pixels, splits, indices, labels = [], [], [], []
    for name in names:
        images = arrays[f"{name}_images"]
        if images.dtype != np.uint8 or not (
            images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
        ):
            raise UserError(
                f"{path}: {name}_images must be uint8 N×H×W or N×H×W×3; got {images.dtype} "
                f"{images.shape}"
            )
        pixels.append(resize(to_nchw(images), request.img_size))
        splits += [name] * len(images)
        indices += list(range(len(images)))
        if f"{name}_labels" in arrays:
            labels.append(_check_labels(arrays[f"{name}_labels"], len(images),
                                        request.num_classes, f"{path}: {name}_labels"))  # fmt: skip
    if labels and len(labels) != len(names):
        raise UserError(
            f"{path}: some *_images arrays have *_labels and others not; give all or none"
        )
    channels = {p.shape[1] for p in pixels}
    if len(channels) > 1:  # grayscale beside RGB: repeat to RGB, as the normalization would
        pixels = [p.expand(-1, 3, -1, -1) for p in pixels]
    return NewImages(
        torch.cat(pixels).contiguous(),
        {"split": splits, "index": indices},
        np.concatenate(labels) if labels else None,
    )


def _check_labels(labels: np.ndarray, count: int, num_classes: int, what: str) -> np.ndarray:
    flat = labels.reshape(-1)
    if len(flat) != count or not np.issubdtype(flat.dtype, np.integer):
        raise UserError(f"{what} must hold {count} integer class indices, one per image")
    if flat.min() < 0 or flat.max() >= num_classes:
        raise UserError(f"{what} lie outside the run's classes 0..{num_classes - 1}")
    return flat.astype(np.int64)
