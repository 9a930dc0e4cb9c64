"""``riftune predict``: class probabilities of a finished run's best model on new images.

New images come in one of three forms, and are preprocessed exactly as the run's own data
(:mod:`riftune.data`): resized once to the run's ``--img-size`` and normalized with the
backbone's mean and standard deviation.

- a ``.npz`` file in MedMNIST's format: every ``<name>_images`` array (uint8, N×H×W or
  N×H×W×C, C ∈ {1, 3}), with ``<name>_labels`` when present; rows are keyed by ``split``
  (``<name>``) and ``index``. Resized as MedMNIST files are (antialiased bilinear, torch);
- an image folder (``imagefolder:PATH`` or a folder path): every image file under it,
  recursively. When every image sits in a first-level subfolder named like one of the
  run's classes, that folder gives its label. Rows are keyed by ``file`` (relative path);
- a CSV (``csv:FILE[?image=COL&label=COL]`` or a ``.csv`` path): an image path column
  (found by the names :mod:`riftune.data.csv_table` knows, relative to the CSV's folder) and
  an optional label column (class indices, or the run's class names). Rows keyed by ``file``.

Images from files are decoded as the run's image files were (PIL, bilinear with antialiasing).
The output is a predictions CSV (:mod:`riftune.report.predictions`).
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from riftune.commands.evaluate import FinishedRun, load_finished_run
from riftune.data.csv_table import IMAGE_COLUMNS, LABEL_COLUMNS, _column, _image_paths
from riftune.data.dataset import ImageTensorDataset
from riftune.data.files import IMAGE_SUFFIXES, decode_images
from riftune.data.load import _split_options
from riftune.data.transforms import resize, to_nchw
from riftune.engine.evaluation import eval_loader
from riftune.errors import UserError
from riftune.metrics import collect
from riftune.report.predictions import write_predictions_csv


@dataclass
class NewImages:
    """Images to predict, resized but not yet normalized.

    Attributes:
        pixels: uint8. Shape: (N, C, S, S), C ∈ {1, 3}.
        keys: the leading columns of the predictions CSV (``split``/``index`` or ``file``).
        labels: class indices when the source has them. Shape: (N,) int64.
    """

    pixels: torch.Tensor
    keys: dict[str, list]
    labels: np.ndarray | None


def predict_run(
    run_dir: str | Path,
    data: str | Path,
    out_csv: str | Path,
    batch_size: int = 128,
    device: str = "auto",
) -> Path:
    """Predict ``data`` with the run's best checkpoint and write ``out_csv``.

    Args:
        run_dir: a finished run folder.
        data: a ``.npz`` file, an image folder or a CSV (see the module docs).
        out_csv: the predictions CSV to write (its folder must exist).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``out_csv``.

    Raises:
        UserError: not a finished run, unreadable data, labels that are not the run's classes.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    out_csv = Path(out_csv)
    if out_csv.is_dir() or not out_csv.parent.is_dir():
        raise UserError(f"--out {out_csv} must be a file in an existing folder")
    return predict_loaded(load_finished_run(run_dir, device), data, out_csv, batch_size)


def predict_loaded(run: FinishedRun, data: str | Path, out_csv: Path, batch_size: int) -> Path:
    """:func:`predict_run` with the run already rebuilt (:func:`load_finished_run`)."""
    class_names = run.data.class_names
    images = read_new_images(data, run.config.data.img_size, class_names, run.data.num_classes)
    cfg = run.model.pretrained_cfg
    labels = images.labels if images.labels is not None else np.zeros(len(images.pixels))
    dataset = ImageTensorDataset(
        images.pixels, torch.from_numpy(labels).long(), tuple(cfg["mean"]), tuple(cfg["std"])
    )
    out = collect(
        run.model, eval_loader(dataset, batch_size, run.ctx), run.ctx.device, run.amp_dtype
    )
    if run.ctx.is_main:
        write_predictions_csv(out_csv, out.logits, images.keys, class_names, images.labels)
    return out_csv


def read_new_images(
    data: str | Path, img_size: int, class_names: Sequence[str] | None, num_classes: int
) -> NewImages:
    """Load ``data`` (npz, image folder or CSV) resized to ``img_size`` (see the module docs)."""
    spec = str(data)
    body, options = _split_options(spec)
    if body.startswith("csv:") or body.lower().endswith(".csv"):
        return _from_csv(Path(body.removeprefix("csv:")).expanduser(), options, img_size,
                         class_names, num_classes)  # fmt: skip
    if options:
        raise UserError(f"options after '?' apply to csv: data only; got {spec!r}")
    if body.startswith("imagefolder:") or Path(body).is_dir():
        folder = Path(body.removeprefix("imagefolder:")).expanduser()
        return _from_folder(folder, img_size, class_names, num_classes)
    if body.lower().endswith(".npz"):
        return _from_npz(Path(body).expanduser(), img_size, num_classes)
    raise UserError(
        f"--data {spec!r} is not a .npz file, an image folder or a .csv file; give one of these"
    )


def _from_npz(path: Path, img_size: int, num_classes: int) -> NewImages:
    if not path.is_file():
        raise UserError(f"--data {path} does not exist; check the path")
    try:
        archive = np.load(path, allow_pickle=False)
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{path} is not a readable .npz of plain arrays ({type(err).__name__}); give a "
            "MedMNIST-format .npz"
        ) from err
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
        pixels.append(resize(to_nchw(images), img_size))
        splits += [name] * len(images)
        indices += list(range(len(images)))
        if f"{name}_labels" in arrays:
            labels.append(_check_labels(arrays[f"{name}_labels"], len(images), num_classes,
                                        f"{path}: {name}_labels"))  # fmt: skip
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


def _from_folder(
    folder: Path, img_size: int, class_names: Sequence[str] | None, num_classes: int
) -> NewImages:
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )  # fmt: skip
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    lookup = {name: index for index, name in enumerate(names)}
    parents = [p.relative_to(folder).parts for p in files]
    labelled = all(len(parts) == 2 and parts[0] in lookup for parts in parents)
    labels = np.array([lookup[parts[0]] for parts in parents]) if labelled else None
    return NewImages(
        to_nchw(decode_images(files, img_size)),
        {"file": [p.relative_to(folder).as_posix() for p in files]},
        labels,
    )


def _from_csv(
    file: Path,
    options: dict[str, str],
    img_size: int,
    class_names: Sequence[str] | None,
    num_classes: int,
) -> NewImages:
    unknown = sorted(set(options) - {"image", "label", "template", "ext"})
    if unknown:
        raise UserError(f"unknown csv option(s) {unknown}; valid: image, label, template, ext")
    if not file.is_file():
        raise UserError(f"csv file {file} does not exist; check the path")
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = [name for name in reader.fieldnames or [] if name is not None]
    if not rows:
        raise UserError(f"csv file {file} has no data rows")
    image_col = _column(header, options.get("image"), IMAGE_COLUMNS, "image", file)
    label_col = _column(header, options.get("label"), LABEL_COLUMNS, "label", file, required=False)
    paths = _image_paths(rows, image_col, file, options)
    labels = None
    if label_col is not None:
        labels = _labels_by_name(
            [(row[label_col] or "").strip() for row in rows], class_names, num_classes, file
        )
    return NewImages(
        to_nchw(decode_images(paths, img_size)),
        {"file": [(row[image_col] or "").strip() for row in rows]},
        labels,
    )


def _labels_by_name(
    values: list[str], class_names: Sequence[str] | None, num_classes: int, file: Path
) -> np.ndarray:
    names = list(class_names) if class_names else []
    lookup = {name: index for index, name in enumerate(names)}
    out = []
    for line, value in enumerate(values, start=2):
        if value in lookup:
            out.append(lookup[value])
        elif value.lstrip("+-").isdigit() and 0 <= int(value) < num_classes:
            out.append(int(value))
        else:
            raise UserError(
                f"csv {file} line {line}: label {value!r} is not one of the run's classes "
                f"({', '.join(names) or f'0..{num_classes - 1}'})"
            )
    return np.asarray(out, dtype=np.int64)


def _check_labels(labels: np.ndarray, count: int, num_classes: int, what: str) -> np.ndarray:
    flat = labels.reshape(-1)
    if len(flat) != count or not np.issubdtype(flat.dtype, np.integer):
        raise UserError(f"{what} must hold {count} integer class indices, one per image")
    if flat.min() < 0 or flat.max() >= num_classes:
        raise UserError(f"{what} lie outside the run's classes 0..{num_classes - 1}")
    return flat.astype(np.int64)


def predict_command(
    run: str, data: str, out: str, batch_size: int = 128, device: str = "auto"
) -> int:
    """``riftune predict --run DIR --data X --out FILE [--batch-size N] [--device D]``."""
    written = predict_run(run, data, out, batch_size, device)
    print(f"wrote {written}")
    return 0
