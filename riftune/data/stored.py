"""What a data format hands over: each split's images as stored, and checked labels.

A split is kept as the format has it (an array of pixels, or a list of image files) until the
few-shot draw has chosen its items, so that only the chosen files are decoded; then it is read
at the run's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from riftune.data.files import FileSplits, decode_images
from riftune.data.splits import SPLITS, count_outputs
from riftune.data.transforms import resize, to_nchw
from riftune.errors import UserError


class StoredImages(Protocol):
    """A split's images before resizing."""

    def __len__(self) -> int: ...

    def subset(self, indices: np.ndarray) -> StoredImages:
        """The images at ``indices``, in that order."""
        ...

    def join(self, other: StoredImages) -> StoredImages:
        """These images, then ``other``'s (of the same kind)."""
        ...

    def pixels(self, size: int) -> torch.Tensor:
        """The images resized to ``size`` × ``size``. Shape: (N, C, S, S) uint8, C ∈ {1, 3}."""
        ...


@dataclass
class ImageArray:
    """Pixels held in memory (a ``.npz`` split), resized as MedMNIST files are (antialiased
    bilinear, :func:`~riftune.data.transforms.resize`).

    Attributes:
        array: uint8. Shape: (N, H, W) or (N, H, W, C), C ∈ {1, 3}.
    """

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def subset(self, indices: np.ndarray) -> ImageArray:
        return ImageArray(self.array[indices])

    def join(self, other: ImageArray) -> ImageArray:
        return ImageArray(np.concatenate([self.array, other.array]))

    def pixels(self, size: int) -> torch.Tensor:
        return resize(to_nchw(self.array), size)


@dataclass
class ImageFiles:
    """Image files, decoded and resized by PIL (:func:`~riftune.data.files.decode_images`)."""

    paths: Sequence[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices])

    def join(self, other: ImageFiles) -> ImageFiles:
        return ImageFiles([*self.paths, *other.paths])

    def pixels(self, size: int) -> torch.Tensor:
        return to_nchw(decode_images(self.paths, size))


@dataclass
class LabelledSplits:
    """A format's train/val/test images and checked labels, before shots and resizing.

    Attributes:
        images: split name → the stored images.
        labels: split name → class indices (N,) int64, or multi-label 0/1 targets (N, L).
        num_classes: the number of logits the labels call for (classes K, or labels L).
        class_names: the name of each class index (or label), when the source names them.
        name: the dataset's short name (a flag, a file stem, a folder name).
        source: where it came from (a path), for messages and ``metrics.json``.
        groups: split name → the group of each image (a patient), when the source has them.
    """

    images: dict[str, StoredImages]
    labels: dict[str, np.ndarray]
    num_classes: int
    class_names: list[str] | None
    name: str
    source: str
    groups: dict[str, np.ndarray] | None = None


def labelled_files(
    table: FileSplits, name: str, source: str, splits: Sequence[str] = SPLITS
) -> LabelledSplits:
    """The ``splits`` of an image-file table (image folder, CSV), with their labels checked;
    the files of the other splits are never opened.

    Raises:
        UserError: an empty split, or labels :func:`~riftune.data.splits.count_outputs` refuses.
    """
    for split in splits:
        if not table.paths[split]:
            raise UserError(f"{source}: the {split} split is empty; every split needs images")
    known = len(table.class_names) if table.class_names else None
    labels = {split: table.labels[split] for split in splits}
    return LabelledSplits(
        images={split: ImageFiles(table.paths[split]) for split in splits},
        labels=labels,
        num_classes=count_outputs(labels, known, source),
        class_names=table.class_names,
        name=name,
        source=source,
        groups=None if table.groups is None else {s: table.groups[s] for s in splits},
    )
