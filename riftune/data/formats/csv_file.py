"""A CSV table of image paths: ``--data csv:FILE[?image=COL&label=COL&...]``, or a ``.csv`` path.

Splits: an image, a label and a split column per row (see :mod:`riftune.data.csv_table` for
the columns it finds and its options); ``--group-column`` and ``--label-columns`` add the
``group`` and ``label`` options.

Images to classify: the image column (options ``image``, ``template``, ``ext``) and an optional
label column (``label``: class indices, or the run's class names); rows keyed by ``file``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from riftune.data.csv_table import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    find_column,
    image_paths,
    read_csv_table,
    read_rows,
)
from riftune.data.files import decode_images
from riftune.data.formats.base import (
    DataFormat,
    ImageRequest,
    NewImages,
    SplitRequest,
    check_options,
    register,
)
from riftune.data.stored import LabelledSplits, labelled_files
from riftune.data.transforms import to_nchw
from riftune.errors import UserError


@register
class CsvFile(DataFormat):
    """A table with an image path column, a label and (optionally) a split per row."""

    name = "csv"
    prefix = "csv:"
    precedence = 2
    form = "csv:FILE"
    help = "csv:FILE (image path, label and split columns; or a .csv path)"
    table_columns = True

    def claims(self, value: str) -> bool:
        return value.lower().endswith(".csv")

    def splits(
        self, location: str, options: dict[str, str], request: SplitRequest
    ) -> LabelledSplits:
        file = Path(location).expanduser()
        merged = _with_columns(options, request.group_column, request.label_columns)
        return labelled_files(read_csv_table(file, merged), file.stem, str(file), request.splits)

    def new_images(
        self, location: str, options: dict[str, str], request: ImageRequest
    ) -> NewImages:
        check_options(self, options, ("image", "label", "template", "ext"))
        file = Path(location).expanduser()
        header, rows = read_rows(file)
        image_col = find_column(header, options.get("image"), IMAGE_COLUMNS, "image", file)
        label_col = find_column(
            header, options.get("label"), LABEL_COLUMNS, "label", file, required=False
        )
        labels = None
        if label_col is not None:
            values = [(row[label_col] or "").strip() for row in rows]
            labels = _labels_by_name(values, request, file)
        return NewImages(
            to_nchw(decode_images(image_paths(rows, image_col, file, options), request.img_size)),
            {"file": [(row[image_col] or "").strip() for row in rows]},
            labels,
        )


def _with_columns(
    options: dict[str, str], group_column: str | None, label_columns: Sequence[str] | None
) -> dict[str, str]:
    """The spec's options with the group and label columns given as arguments added."""
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


def _labels_by_name(values: list[str], request: ImageRequest, file: Path) -> np.ndarray:
    """Class indices of a label column holding the run's class names or indices."""
    names = list(request.class_names or [])
    lookup = {name: index for index, name in enumerate(names)}
    out = []
    for line, value in enumerate(values, start=2):
        if value in lookup:
            out.append(lookup[value])
        elif value.lstrip("+-").isdigit() and 0 <= int(value) < request.num_classes:
            out.append(int(value))
        else:
            raise UserError(
                f"csv {file} line {line}: label {value!r} is not one of the run's classes "
                f"({', '.join(names) or f'0..{request.num_classes - 1}'})"
            )
    return np.asarray(out, dtype=np.int64)
