"""``csv:FILE``: a table with an image column, a label and (optionally) a split per row.

Columns are found by name (case-insensitive), or named with options
``csv:FILE?image=COL&label=COL&split=COL``:

- image: the first of ``image, image_path, path, file, filename, file_name, img, id_code,
  image_id, image_name, isic_id``. Values are paths relative to the CSV's folder, put in
  place of the ``{}`` of ``template`` (default ``{}``; APTOS2019: ``template=train_images/{}.png``;
  nothing else in it is interpreted) or given
  an extension with ``ext=.png``. A value with no extension that names no file is also tried
  with the common image extensions.
- label: the first of ``label, labels, diagnosis, class, target, category, level, dx``. All
  integers: class indices 0..K-1 (each present in train). Otherwise class names: sorted, the
  i-th name is class i. With no label column, one-hot columns (ISIC 2018/2019 ground truth:
  one 0/1 column per class, exactly one 1 per row) are read; a class column with no 1 at
  all (ISIC 2019's UNK) is dropped.
- several labels (multi-label, e.g. findings on a chest X-ray): ``label=COL1,COL2,...``
  names one 0/1 column per label; the targets are then an (N, L) 0/1 table and the column
  names are the label names.
- split: the first of ``split, set, subset, partition``, values train/val/test (also
  training, valid, validation, dev, testing; any case). Without a split column, each class
  is split seeded: ``test`` (default 0.2) of its rows for test, then ``val`` (default 0.1)
  of the rest for validation. With a split column but no val rows, ``val`` of each training
  class is held out. The split seed is ``split_seed`` (default 0), independent of the
  training seed.
- group (only when named, ``group=COL``): rows with the same value (a patient, a lesion)
  always land in the same split; the hold-outs above then take whole groups
  (:func:`~riftune.data.splits.grouped_holdout`: stratified by each group's most frequent
  label, proportions near the fractions). With a split column, a group found in two splits
  is refused.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from riftune.data.files import IMAGE_SUFFIXES, FileSplits
from riftune.data.npz import to_class_indices
from riftune.data.splits import SPLITS, grouped_holdout, stratified_holdout
from riftune.errors import UserError

IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "img",
                 "id_code", "image_id", "image_name", "isic_id")  # fmt: skip
LABEL_COLUMNS = ("label", "labels", "diagnosis", "class", "target", "category", "level", "dx")
SPLIT_COLUMNS = ("split", "set", "subset", "partition")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}  # fmt: skip
OPTIONS = ("image", "label", "split", "group", "template", "ext", "val", "test", "split_seed")
_INTEGER = re.compile(r"^[+-]?\d+(\.0*)?$")


def read_csv_table(file: Path, options: dict[str, str] | None = None) -> FileSplits:
    """Read a labels table into image paths and class indices (or 0/1 targets) per split.

    Args:
        file: the CSV file.
        options: any of ``image``, ``label`` (one column, or several comma-separated for
            multi-label), ``split``, ``group`` (column names), ``template`` or ``ext`` (image
            path format), ``val``, ``test`` (hold-out fractions) and ``split_seed``, as
            strings.

    Raises:
        UserError: a missing file or column, an unknown option or split value, an empty
            label or group, a multi-label value other than 0/1, a group in two given splits,
            or listed images that do not exist.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown csv option(s) {unknown}; valid: {', '.join(OPTIONS)}")
    header, rows = read_rows(file)
    image_col = find_column(header, options.get("image"), IMAGE_COLUMNS, "image", file)
    split_col = find_column(
        header, options.get("split"), SPLIT_COLUMNS, "split", file, required=False
    )
    group_col = (
        find_column(header, options["group"], (), "group", file) if "group" in options else None
    )
    label_option = options.get("label")
    if label_option is not None and "," in label_option:
        columns = [find_column(header, name, (), "label", file) for name in label_option.split(",")]
        labels, class_names = _multilabel(rows, columns, file)
    elif (
        label_col := find_column(header, label_option, LABEL_COLUMNS, "label", file, required=False)
    ) is not None:
        labels, class_names = _labels(rows, label_col, file)
    else:
        labels, class_names = _one_hot(
            rows, [c for c in header if c not in (image_col, split_col, group_col)], file
        )
    paths = image_paths(rows, image_col, file, options)
    groups = _groups(rows, group_col, file) if group_col is not None else None
    indices = _split_rows(rows, split_col, labels, groups, options, file)
    return FileSplits(
        paths={split: [paths[i] for i in idx] for split, idx in indices.items()},
        labels={split: labels[idx] for split, idx in indices.items()},
        class_names=class_names,
        groups=None if groups is None else {split: groups[idx] for split, idx in indices.items()},
    )


def read_rows(file: Path) -> tuple[list[str], list[dict]]:
    """The header and the rows (column name → value) of a UTF-8 CSV file.

    Raises:
        UserError: a missing file, text that is not UTF-8 or not CSV, or no data rows.
    """
    if not file.is_file():
        raise UserError(f"csv file {file} does not exist; check the path")
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = [name for name in reader.fieldnames or [] if name is not None]
    except UnicodeDecodeError as err:
        raise UserError(
            f"csv file {file} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from err
    except csv.Error as err:
        raise UserError(f"csv file {file} cannot be parsed ({err}); check the file") from err
    if not rows:
        raise UserError(f"csv file {file} has no data rows")
    return header, rows


def find_column(
    header: list[str],
    chosen: str | None,
    candidates: tuple[str, ...],
    role: str,
    file: Path,
    required: bool = True,
) -> str | None:
    """The header's column ``chosen`` (any case), else the first of ``candidates`` present.

    Raises:
        UserError: ``chosen`` is missing, or ``required`` and no candidate is present.
    """
    by_lower = {name.strip().lower(): name for name in header}
    if chosen is not None:
        if chosen.strip().lower() not in by_lower:
            raise UserError(f"csv {file} has no column {chosen!r}; columns: {', '.join(header)}")
        return by_lower[chosen.strip().lower()]
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    if required:
        raise UserError(
            f"csv {file}: no {role} column found (looked for {', '.join(candidates)}); "
            f"name it with csv:{file}?{role}=COLUMN"
        )
    return None


def _labels(rows: list[dict], column: str, file: Path) -> tuple[np.ndarray, list[str] | None]:
    values = [(row[column] or "").strip() for row in rows]
    for line, value in enumerate(values, start=2):
        if not value:
            raise UserError(f"csv {file} line {line}: empty {column!r}; every row needs a label")
    if all(_INTEGER.match(value) for value in values):
        return to_class_indices(
            np.array([float(v) for v in values]), f"csv {file} {column!r}"
        ), None
    names = sorted(set(values))
    lookup = {name: index for index, name in enumerate(names)}
    return np.array([lookup[v] for v in values], dtype=np.int64), names


def _multilabel(rows: list[dict], columns: list[str], file: Path) -> tuple[np.ndarray, list[str]]:
    targets = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for line, row in enumerate(rows, start=2):
        for j, column in enumerate(columns):
            value = (row[column] or "").strip()
            if value not in ("0", "1", "0.0", "1.0"):
                raise UserError(
                    f"csv {file} line {line}: {column!r} is {value!r}; the label columns of a "
                    "multi-label table hold 0 or 1"
                )
            targets[line - 2, j] = int(float(value))
    return targets, columns


def _groups(rows: list[dict], column: str, file: Path) -> np.ndarray:
    values = [(row[column] or "").strip() for row in rows]
    for line, value in enumerate(values, start=2):
        if not value:
            raise UserError(f"csv {file} line {line}: empty {column!r}; every row needs a group")
    return np.array(values)


def _one_hot(rows: list[dict], columns: list[str], file: Path) -> tuple[np.ndarray, list[str]]:
    try:
        table = np.array([[float(row[c]) for c in columns] for row in rows])
    except (TypeError, ValueError):
        table = None
    if (
        table is None
        or not columns
        or not np.isin(table, (0.0, 1.0)).all()
        or not (table.sum(1) == 1).all()
    ):
        raise UserError(
            f"csv {file}: no label column found (looked for {', '.join(LABEL_COLUMNS)}) and the "
            f"other columns are not one-hot; name it with csv:{file}?label=COLUMN"
        )
    used = table.sum(0) > 0
    return table[:, used].argmax(1).astype(np.int64), [
        c for c, u in zip(columns, used, strict=True) if u
    ]


def image_paths(rows: list[dict], column: str, file: Path, options: dict[str, str]) -> list[Path]:
    """Each row's image file: ``column``'s value in ``template``/with ``ext``, under the CSV's
    folder (a value with no extension that names no file also tried with image extensions).

    Raises:
        UserError: a template without ``{}``, or listed images that do not exist.
    """
    template = options.get("template") or "{}" + options.get("ext", "")
    if "{}" not in template:
        raise UserError(f"csv template {template!r} needs a {{}} where the {column!r} value goes")
    paths, missing = [], []
    for row in rows:
        value = (row[column] or "").strip()
        path = file.parent / template.replace("{}", value)
        if not _is_file(path) and not path.suffix and "template" not in options:
            path = next((path.with_name(path.name + s) for s in sorted(IMAGE_SUFFIXES)
                         if _is_file(path.with_name(path.name + s))), path)  # fmt: skip
        if not value or not _is_file(path):
            missing.append(path)
        paths.append(path)
    if missing:
        raise UserError(
            f"csv {file}: {len(missing)} listed images not found, e.g. {missing[0]}; paths are "
            "relative to the csv's folder (set the format with ?template=DIR/{}.png)"
        )
    return paths


def _holdout(
    labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class hold-out of rows, or of whole groups when the rows have groups."""
    if groups is None and labels.ndim == 1:
        return stratified_holdout(labels, fraction, seed)
    return grouped_holdout(
        labels, np.arange(len(labels)) if groups is None else groups, fraction, seed
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False also for names the system refuses (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _split_rows(
    rows: list[dict],
    column: str | None,
    labels: np.ndarray,
    groups: np.ndarray | None,
    options: dict[str, str],
    file: Path,
) -> dict[str, np.ndarray]:
    try:
        val_fraction = float(options.get("val", 0.1))
        test_fraction = float(options.get("test", 0.2))
        seed = int(options.get("split_seed", 0))
    except ValueError as err:
        raise UserError(f"csv options val, test and split_seed must be numbers ({err})") from err
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1):
        raise UserError(
            f"csv options val and test must be fractions in (0, 1); got {val_fraction}, {test_fraction}"
        )
    if column is None:
        rest, test = _holdout(labels, groups, test_fraction, seed)
        kept, held = _holdout(
            labels[rest], None if groups is None else groups[rest], val_fraction, seed
        )
        return {"train": rest[kept], "val": rest[held], "test": test}
    names = []
    for line, row in enumerate(rows, start=2):
        value = (row[column] or "").strip().lower()
        if value not in SPLIT_ALIASES:
            raise UserError(
                f"csv {file} line {line}: split {row[column]!r} is not one of train, val, test"
            )
        names.append(SPLIT_ALIASES[value])
    names_array = np.array(names)
    indices = {split: np.flatnonzero(names_array == split) for split in SPLITS}
    for split in ("train", "test"):
        if not len(indices[split]):
            raise UserError(
                f"csv {file}: no rows with {column} = {split}; every run needs {split} rows"
            )
    if groups is not None:
        _check_groups_stay(groups, indices, file)
    if not len(indices["val"]):
        train = indices["train"]
        kept, held = _holdout(
            labels[train], None if groups is None else groups[train], val_fraction, seed
        )
        indices["train"], indices["val"] = train[kept], train[held]
    return indices


def _check_groups_stay(groups: np.ndarray, indices: dict[str, np.ndarray], file: Path) -> None:
    """Refuse a given split column that puts one group into two splits."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for group in np.unique(groups[indices[split]]).tolist():
            if seen.setdefault(group, split) != split:
                raise UserError(
                    f"csv {file}: group {group!r} has rows in both {seen[group]} and {split}; "
                    "fix the split column or drop it to split by group"
                )
