"""The in-memory dataset every source loads into, and the train/val/test bundle it comes in."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from riftune.data.transforms import CropDraws, Normalize, draw_crops, resized_crop_and_flip

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ImageTensorDataset(Dataset[Item]):
    """Images held resized as uint8 in memory; items are normalized on access.

    Each item is ``(image, label, index)``: the image as float32 RGB normalized with
    ``mean``/``std``, its class index (multi-label: its 0/1 targets), and its position in
    this dataset.

    With ``augment`` on (meant for the training split; off by default), every access
    applies a random resized crop and horizontal flip
    (:func:`~riftune.data.transforms.resized_crop_and_flip`) whose parameters come from a
    table drawn once per epoch for all N items (:func:`~riftune.data.transforms.draw_crops`,
    from a CPU ``torch.Generator`` seeded with ``(seed, epoch)`` through NumPy's
    ``SeedSequence``), indexed by the items' positions. So an item's augmentation is a
    function of ``(seed, epoch, index)`` alone: it does not depend on the batch it comes in,
    the number of processes, data-loader workers, or where a run was resumed. Call
    :meth:`set_epoch` at the start of every epoch (and use non-persistent workers, so that
    the workers see the new epoch).

    Args:
        images: resized pixels. Shape: (N, C, S, S) uint8, C ∈ {1, 3}.
        labels: class indices (N,), or multi-label 0/1 targets (N, L); stored as int64.
        mean: per-channel RGB mean of the normalization (on the 0..1 scale).
        std: per-channel RGB standard deviation of the normalization.
        augment: apply random resized crop and horizontal flip on access.
        seed: seed of the augmentation.
        source_indices: for a subset (few-shot), each item's position in the full split.
            Shape: (N,) int64. ``None`` when the dataset is the whole split.

    Shape:
        item image: (3, S, S) float32; label () int64 (multi-label: (L,)); index () int64.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        seed: int = 0,
        source_indices: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 (N, 1|3, S, S); got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim not in (1, 2) or len(labels) != len(images):
            raise ValueError(
                f"labels must have shape ({len(images)},) or ({len(images)}, L); "
                f"got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.normalize = Normalize(mean, std)
        self.augment = augment
        self.seed = seed
        self.source_indices = source_indices
        self.epoch = 0
        self._crops: CropDraws | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        images, labels, indices = self.batch([index])
        return images[0], labels[0], indices[0]

    def batch(self, indices: Sequence[int]) -> Item:
        """The items at ``indices`` as one batch: the stacked ``__getitem__`` results.

        One gather and one fused multiply-add, plus with augmentation one batched
        resampling, all run where the images live (see :meth:`to`: on the GPU it costs the
        host nothing).

        Shape:
            output: images (B, 3, S, S) float32; labels (B,) int64 (multi-label: (B, L));
            indices (B,) int64; all on the images' device.
        """
        index = torch.as_tensor(indices, dtype=torch.int64).to(
            self.images.device, non_blocking=True
        )
        pixels = self.images[index]
        if self.augment:
            pixels = resized_crop_and_flip(pixels, self._epoch_crops().take(index))
        return self.normalize(pixels), self.labels[index], index

    def to(self, device: torch.device | str) -> ImageTensorDataset:
        """A copy of this dataset whose images and labels live on ``device``.

        Meant for :meth:`batch` (e.g. through :class:`riftune.data.sampling.BatchLoader`):
        the uint8 images sit on the GPU and batches never cross the host. Not for
        multi-worker DataLoaders.
        """
        moved = copy.copy(self)
        moved.images, moved.labels = self.images.to(device), self.labels.to(device)
        moved._crops = None  # drawn again, on the new device
        return moved

    def without_augmentation(self) -> ImageTensorDataset:
        """A view of this dataset (same images) that never augments, e.g. for embeddings."""
        plain = copy.copy(self)
        plain.augment = False
        return plain

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws the next accesses use."""
        self.epoch = epoch
        self._crops = None

    def _epoch_crops(self) -> CropDraws:
        """The current epoch's crop and flip draws of all N items, on the images' device.

        Drawn on first use after :meth:`set_epoch` (or :meth:`to`), from a CPU generator
        seeded with ``SeedSequence((seed, epoch))``, so every rank and worker draws the same.
        """
        if self._crops is None:
            state = np.random.SeedSequence((self.seed, self.epoch)).generate_state(1, np.uint64)
            generator = torch.Generator().manual_seed(int(state[0]))
            draws = draw_crops(len(self), self.image_size, generator)
            self._crops = draws.to(self.images.device)
        return self._crops

    @property
    def multilabel(self) -> bool:
        """Whether the labels are multi-label 0/1 targets (N, L) rather than class indices."""
        return self.labels.ndim == 2

    @property
    def image_size(self) -> int:
        """The side S of the square images."""
        return int(self.images.shape[-1])


@dataclass
class DatasetSplits:
    """A loaded dataset: its three splits and what a model needs to know about it.

    Attributes:
        train: training split (the few-shot subset when ``shots`` was given).
        val: validation split (model selection).
        test: test split (reported once, for the selected checkpoint); ``None`` in a
            cross-validation fold run, which never reads it.
        num_classes: number of classes K (labels 0..K-1), or of labels L for a multi-label
            task: the number of logits either way.
        class_names: name of each class index (multi-label: of each label), when the source
            names them.
        task: ``"multilabel"`` for 0/1 targets per label (one sigmoid per logit), else
            ``"binary"`` for K = 2 and ``"multiclass"`` (ordinal tasks included).
        name: a short name for reports (``breastmnist_64``, a file stem, a folder name).
        source: the file or folder the data was read from.
    """

    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset | None
    num_classes: int
    class_names: list[str] | None
    task: Literal["binary", "multiclass", "multilabel"]
    name: str
    source: str

    @property
    def present(self) -> tuple[str, ...]:
        """The names of the splits loaded: train, val and test, or train and val (a fold)."""
        return ("train", "val") if self.test is None else ("train", "val", "test")

    @property
    def multilabel(self) -> bool:
        """Whether each image has 0/1 targets for several labels (per-label BCE, mean AUC)."""
        return self.task == "multilabel"

    @property
    def label_names(self) -> list[str] | None:
        """The names of the logits: the class names, or the label names of a multi-label task."""
        return self.class_names
