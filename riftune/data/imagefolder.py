"""``imagefolder:PATH``: PATH/{train,val,test}/<class>/<image files>.

Class names are the class folders' names, sorted; class index i is the i-th name. Every
split must hold the same set of class folders, each with at least one image (.png, .jpg,
.jpeg, .bmp, .tif, .tiff, .gif, .webp, searched recursively). When ``val/`` is missing, a
validation split is held out of ``train/``: ``val_fraction`` (default 0.1) of each class,
drawn with ``split_seed`` (default 0, independent of the training seed so that every run
sees the same split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from riftune.data.files import IMAGE_SUFFIXES, FileSplits
from riftune.data.splits import SPLITS, stratified_holdout
from riftune.errors import UserError


def scan_imagefolder(root: Path, val_fraction: float = 0.1, split_seed: int = 0) -> FileSplits:
    """List the image files and class labels of an image-folder dataset.

    Args:
        root: the folder holding ``train/``, ``test/`` and optionally ``val/``.
        val_fraction: share of each training class held out as validation when there is
            no ``val/`` folder.
        split_seed: seed of that hold-out draw.

    Raises:
        UserError: a missing folder, differing class sets, an empty class folder, or fewer
            than two classes.
    """
    if not root.is_dir():
        raise UserError(f"imagefolder path {root} does not exist or is not a folder")
    present = [split for split in SPLITS if (root / split).is_dir()]
    for split in ("train", "test"):
        if split not in present:
            raise UserError(
                f"imagefolder {root} has no {split}/ folder; expected {root}/{{train,val,test}}/<class>/"
            )
    classes = {split: _class_dirs(root / split) for split in present}
    names = sorted(classes["train"])
    if len(names) < 2:
        raise UserError(f"imagefolder {root}/train has {len(names)} class folders; need at least 2")
    for split in present:
        extra, lacking = set(classes[split]) - set(names), set(names) - set(classes[split])
        if extra or lacking:
            raise UserError(
                f"imagefolder {root}: {split}/ differs from train/ in its classes "
                f"(extra: {sorted(extra)}, missing: {sorted(lacking)}); use the same class folders"
            )
    paths: dict[str, list[Path]] = {}
    labels: dict[str, np.ndarray] = {}
    for split in present:
        paths[split], split_labels = [], []
        for index, name in enumerate(names):
            files = _images_in(root / split / name)
            if not files:
                raise UserError(
                    f"imagefolder {root}/{split}/{name} holds no images "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths[split] += files
            split_labels += [index] * len(files)
        labels[split] = np.asarray(split_labels, dtype=np.int64)
    if "val" not in present:
        kept, held = stratified_holdout(labels["train"], val_fraction, split_seed)
        train_paths = paths["train"]
        paths["train"], paths["val"] = (
            [train_paths[i] for i in kept],
            [train_paths[i] for i in held],
        )
        labels["train"], labels["val"] = labels["train"][kept], labels["train"][held]
    return FileSplits(
        paths={s: paths[s] for s in SPLITS},
        labels={s: labels[s] for s in SPLITS},
        class_names=names,
    )


def _class_dirs(split_dir: Path) -> list[str]:
    return [p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
