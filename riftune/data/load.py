"""From a ``--data`` value to normalized train/val/test datasets, or to images to classify.

Both go through the format registry (:func:`riftune.data.formats.resolve`), so every command
takes every form of ``--data``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from riftune.data.dataset import DatasetSplits, ImageTensorDataset
from riftune.data.fewshot import sample_shots
from riftune.data.folds import POOLED, CrossValidation, pool_fold
from riftune.data.formats import ImageRequest, NewImages, SplitRequest, formats, resolve
from riftune.data.splits import SPLITS
from riftune.data.stored import LabelledSplits
from riftune.data.transforms import Normalize
from riftune.errors import UserError


def load_dataset(
    spec: str,
    data_root: str | os.PathLike | None = None,
    img_size: int = 128,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    shots: int | None = None,
    seed: int = 0,
    download: bool = True,
    augment: bool = False,
    group_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    cv: CrossValidation | None = None,
    test: bool = True,
) -> DatasetSplits:
    """Load a dataset named by ``spec``, resized once and normalized per item.

    Specs (:mod:`riftune.data.formats`, one module each):
        - a MedMNIST 2D flag with optional size, ``breastmnist``, ``retinamnist_128``
          (see :mod:`riftune.data.medmnist`: lookup in ``data_root``, ``$RIFTUNE_DATA``,
          ``~/.medmnist``; MD5-checked download when missing; RetinaMNIST's ordinal grades
          as classes; ChestMNIST as a multi-label task of 14 findings);
        - a path to a MedMNIST-format ``.npz`` (see :mod:`riftune.data.npz`), relative ones
          also looked for in the MedMNIST search roots; a file named like a flag
          (``breastmnist_64.npz``) gets that flag's class names;
        - ``imagefolder:PATH[?val=0.1&split_seed=0]`` or a folder's path (see
          :mod:`riftune.data.imagefolder`);
        - ``csv:FILE[?image=COL&label=COL&split=COL&group=COL&template=DIR/{}.png&...]`` or a
          ``.csv`` path (see :mod:`riftune.data.csv_table`; ``label=A,B,C`` for a multi-label
          table).

    Multi-label sources (ChestMNIST's (N, L) 0/1 labels, a CSV with several label columns)
    give ``task == "multilabel"``, items whose label is the (L,) 0/1 target, and
    ``class_names`` the label names.

    Args:
        spec: what to load, as above.
        data_root: first folder to look for MedMNIST files in (and to download them to).
        img_size: side S of the square images the model sees.
        mean: RGB mean of the normalization, on the 0..1 scale (the backbone's).
        std: RGB standard deviation of the normalization.
        shots: if given, keep only this many training images per class (drawn with
            ``seed``); validation and test stay whole.
        seed: seed of the few-shot draw and of the training augmentation.
        download: download a missing MedMNIST file (otherwise say where to put it).
        augment: random resized crop (80-100% of the area) and horizontal flip on the
            training split; off by default.
        group_column: tables only, the column whose rows stay in one split (a patient);
            the same as the spec option ``group=COL``.
        label_columns: tables only, the 0/1 columns of a multi-label table; the same as
            the spec option ``label=A,B,C``.
        cv: a cross-validation fold (:mod:`riftune.data.folds`): train (after ``shots``) and
            val pooled, the fold validates, the rest trains, and the test split is never
            read (``test`` is ``None``).
        test: read the test split; ``False`` leaves it unread (``test`` is ``None``), as a
            cross-validation fold does.

    Returns:
        The splits, whose items are ``(image (3, S, S) float32, label, index)``.

    Raises:
        UserError: an unknown spec, a missing or invalid file, bad labels, or too few
            images per class for ``shots``; the message names the problem and the fix.
    """
    if img_size < 1:
        raise UserError(f"--img-size must be positive; got {img_size}")
    Normalize(mean, std)  # check mean and std before any loading
    data = resolve(spec)
    if not data.format.table_columns and (group_column is not None or label_columns is not None):
        tables = " and ".join(f.prefix or f.name for f in formats() if f.table_columns)
        raise UserError(
            f"--group-column and --label-columns apply to {tables} data only; got --data {spec!r}"
        )
    request = SplitRequest(
        data_root, download, group_column, label_columns, SPLITS if test and cv is None else POOLED
    )
    stored = data.splits(request)
    images, labels = dict(stored.images), dict(stored.labels)
    groups = dict(stored.groups) if stored.groups is not None else None
    chosen = None
    if shots is not None:
        chosen = sample_shots(labels["train"], shots, seed, stored.num_classes, stored.class_names)
        images["train"], labels["train"] = images["train"].subset(chosen), labels["train"][chosen]
        if groups is not None:
            groups["train"] = groups["train"][chosen]
    if cv is not None:
        images, labels = pool_fold(cv, images, labels, groups)
        chosen = None
    pixels = {split: images[split].pixels(img_size) for split in images}
    return _bundle(stored, pixels, labels, chosen, mean, std, seed, augment)


def load_new_images(
    spec: str,
    img_size: int,
    class_names: Sequence[str] | None,
    num_classes: int,
    data_root: str | os.PathLike | None = None,
) -> NewImages:
    """Images to classify with a run's model, in any form ``--data`` takes, resized.

    Args:
        spec: the ``--data`` value.
        img_size: the run's image side S.
        class_names: the run's class names, to read labels given by name.
        num_classes: the run's class count K; labels must lie in 0..K-1.
        data_root: first folder to look for MedMNIST files in.

    Raises:
        UserError: an unknown spec, unreadable data, or labels that are not the run's classes.
    """
    return resolve(spec).new_images(ImageRequest(img_size, class_names, num_classes, data_root))


def _task(train_labels: np.ndarray, num_classes: int) -> str:
    if train_labels.ndim == 2:
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def _bundle(
    stored: LabelledSplits,
    pixels: dict[str, torch.Tensor],
    labels: dict[str, np.ndarray],
    chosen: np.ndarray | None,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    augment: bool,
) -> DatasetSplits:
    def make(split: str) -> ImageTensorDataset:
        is_train = split == "train"
        return ImageTensorDataset(
            pixels[split],
            torch.from_numpy(labels[split]),
            mean,
            std,
            augment=augment and is_train,
            seed=seed,
            source_indices=torch.from_numpy(chosen) if is_train and chosen is not None else None,
        )

    return DatasetSplits(
        train=make("train"),
        val=make("val"),
        test=make("test") if "test" in pixels else None,
        num_classes=stored.num_classes,
        class_names=stored.class_names,
        task=_task(labels["train"], stored.num_classes),
        name=stored.name,
        source=stored.source,
    )
