"""One entry point from a ``--data`` spec to normalized train/val/test datasets."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from riftune.data import medmnist
from riftune.data.csv_table import read_csv_table
from riftune.data.dataset import DatasetSplits, ImageTensorDataset
from riftune.data.fewshot import sample_shots
from riftune.data.files import FileSplits, decode_images
from riftune.data.folds import POOLED, CrossValidation, pool_fold
from riftune.data.imagefolder import scan_imagefolder
from riftune.data.npz import read_npz
from riftune.data.splits import SPLITS, count_outputs
from riftune.data.transforms import Normalize, resize, to_nchw
from riftune.errors import UserError

SPEC_FORMS = (
    "a MedMNIST flag (e.g. breastmnist, breastmnist_64), a .npz path, imagefolder:PATH or csv:FILE"
)


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
) -> DatasetSplits:
    """Load a dataset named by ``spec``, resized once and normalized per item.

    Specs:
        - a MedMNIST 2D flag with optional size, ``breastmnist``, ``retinamnist_128``
          (see :mod:`riftune.data.medmnist`: lookup in ``data_root``, ``$RIFTUNE_DATA``,
          ``~/.medmnist``; MD5-checked download when missing; RetinaMNIST's ordinal grades
          as classes; ChestMNIST as a multi-label task of 14 findings);
        - a path to a MedMNIST-format ``.npz`` (see :mod:`riftune.data.npz`), relative ones
          also looked for in the MedMNIST search roots; a file named like a flag
          (``breastmnist_64.npz``) gets that flag's class names;
        - ``imagefolder:PATH[?val=0.1&split_seed=0]`` (see :mod:`riftune.data.imagefolder`);
        - ``csv:FILE[?image=COL&label=COL&split=COL&group=COL&template=DIR/{}.png&...]``
          (see :mod:`riftune.data.csv_table`; ``label=A,B,C`` for a multi-label table).

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
        group_column: ``csv:`` only, the column whose rows stay in one split (a patient);
            the same as the spec option ``group=COL``.
        label_columns: ``csv:`` only, the 0/1 columns of a multi-label table; the same as
            the spec option ``label=A,B,C``.
        cv: a cross-validation fold (:mod:`riftune.data.folds`): train + val (after
            ``shots``) pooled, the fold validates, the rest trains, and the test split is
            never read (``test`` is ``None``).

    Returns:
        The splits, whose items are ``(image (3, S, S) float32, label, index)``.

    Raises:
        UserError: an unknown spec, a missing or invalid file, bad labels, or too few
            images per class for ``shots``; the message names the problem and the fix.
    """
    if img_size < 1:
        raise UserError(f"--img-size must be positive; got {img_size}")
    Normalize(mean, std)  # check mean and std before any loading
    body, options = _split_options(spec)
    if not body.startswith("csv:") and (group_column is not None or label_columns is not None):
        raise UserError(
            f"--group-column and --label-columns apply to csv: data only; got --data {spec!r}"
        )
    if body.startswith("imagefolder:"):
        folder = Path(body.removeprefix("imagefolder:")).expanduser()
        table = scan_imagefolder(folder, **_imagefolder_options(options))
        return _from_files(
            table, folder.name, str(folder), img_size, mean, std, shots, seed, augment, cv
        )
    if body.startswith("csv:"):
        file = Path(body.removeprefix("csv:")).expanduser()
        table = read_csv_table(file, _csv_options(options, group_column, label_columns))
        return _from_files(
            table, file.stem, str(file), img_size, mean, std, shots, seed, augment, cv
        )
    if options:
        raise UserError(
            f"options after '?' apply to imagefolder: and csv: specs only; got {spec!r}"
        )
    path, known = _resolve_npz(spec, data_root, download)
    arrays = read_npz(path, SPLITS if cv is None else POOLED)
    name = known.name if known else path.stem
    class_names = list(known.info.labels) if known else None
    labels = {split: arrays[split][1] for split in arrays}
    num_classes = count_outputs(labels, len(class_names) if class_names else None, name)
    images = {split: arrays[split][0] for split in arrays}
    chosen = None
    if shots is not None:
        chosen = sample_shots(labels["train"], shots, seed, num_classes, class_names)
        images["train"], labels["train"] = images["train"][chosen], labels["train"][chosen]
    if cv is not None:
        labels, images = pool_fold(cv, labels, images)
        chosen = None
    pixels = {split: resize(to_nchw(images[split]), img_size) for split in images}
    return _bundle(
        pixels, labels, chosen, num_classes, class_names, name, str(path), mean, std, seed, augment
    )


def _resolve_npz(
    spec: str, data_root: str | os.PathLike | None, download: bool
) -> tuple[Path, medmnist.MedMNISTFile | None]:
    """The .npz file a non-prefixed spec names, and its MedMNIST flag when it has one.

    A path is taken as given; a relative path missing from the working directory is also
    looked for in the MedMNIST search roots. A file named like a flag gets its metadata.
    """
    path = Path(spec).expanduser()
    looks_like_path = spec.lower().endswith(".npz") or "/" in spec or os.sep in spec
    if looks_like_path or (not medmnist.is_flag(spec) and path.exists()):
        if not path.exists() and not path.is_absolute():
            found = [root / path for root in medmnist.search_roots(data_root)]
            path = next((candidate for candidate in found if candidate.exists()), path)
        known = medmnist.parse_flag(path.stem) if medmnist.is_flag(path.stem) else None
        return path, known
    if medmnist.is_flag(spec):
        known = medmnist.parse_flag(spec)
        return medmnist.locate(known, data_root, download), known
    raise UserError(f"unknown dataset {spec!r}; give {SPEC_FORMS}")


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    body, _, query = spec.partition("?")
    if not query or "=" not in query:
        return spec, {}
    try:
        return body, dict(
            urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        )
    except ValueError as err:
        raise UserError(
            f"cannot parse options {query!r} ({err}); write ?key=value&key=value"
        ) from err


def _csv_options(
    options: dict[str, str], group_column: str | None, label_columns: Sequence[str] | None
) -> dict[str, str]:
    """The spec's csv options with the group and label columns given as arguments added."""
    merged = dict(options)
    for key, value, flag in (
        ("group", group_column, "--group-column"),
        ("label", ",".join(label_columns) if label_columns else None, "--label-columns"),
    ):
        if value is None:
            continue
        if key in options and options[key] != value:
            raise UserError(
                f"{flag} {value!r} contradicts the data spec's {key}={options[key]!r}; give one"
            )
        merged[key] = value
    return merged


def _task(train_labels: np.ndarray, num_classes: int) -> str:
    if train_labels.ndim == 2:
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def _imagefolder_options(options: dict[str, str]) -> dict:
    unknown = sorted(set(options) - {"val", "split_seed"})
    if unknown:
        raise UserError(f"unknown imagefolder option(s) {unknown}; valid: val, split_seed")
    try:
        parsed = {
            "val_fraction": float(options.get("val", 0.1)),
            "split_seed": int(options.get("split_seed", 0)),
        }
    except ValueError as err:
        raise UserError(f"imagefolder options val and split_seed must be numbers ({err})") from err
    if not 0 < parsed["val_fraction"] < 1:
        raise UserError(
            f"imagefolder option val must be a fraction in (0, 1); got {options['val']}"
        )
    return parsed


def _from_files(
    table: FileSplits,
    name: str,
    source: str,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    shots: int | None,
    seed: int,
    augment: bool,
    cv: CrossValidation | None,
) -> DatasetSplits:
    for split in SPLITS:
        if not table.paths[split]:
            raise UserError(f"{source}: the {split} split is empty; every split needs images")
    class_names = table.class_names
    num_classes = count_outputs(table.labels, len(class_names) if class_names else None, source)
    paths, labels = dict(table.paths), dict(table.labels)
    groups = dict(table.groups) if table.groups is not None else None
    chosen = None
    if shots is not None:
        chosen = sample_shots(labels["train"], shots, seed, num_classes, class_names)
        paths["train"], labels["train"] = (
            [paths["train"][i] for i in chosen],
            labels["train"][chosen],
        )
        if groups is not None:
            groups["train"] = groups["train"][chosen]
    if cv is not None:
        labels, paths = pool_fold(cv, labels, paths, groups=groups)
        chosen = None
    pixels = {split: to_nchw(decode_images(paths[split], img_size)) for split in paths}
    return _bundle(
        pixels, labels, chosen, num_classes, class_names, name, source, mean, std, seed, augment
    )


def _bundle(
    pixels: dict[str, torch.Tensor],
    labels: dict[str, np.ndarray],
    chosen: np.ndarray | None,
    num_classes: int,
    class_names: list[str] | None,
    name: str,
    source: str,
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
        num_classes=num_classes,
        class_names=class_names,
        task=_task(labels["train"], num_classes),
        name=name,
        source=source,
    )
