"""An image folder: ``--data imagefolder:PATH[?val=0.1&split_seed=0]``, or a folder's path.

Splits: ``PATH/{train,val,test}/<class>/<images>`` (see :mod:`riftune.data.imagefolder`; a
missing ``val/`` is held out of ``train/``: ``val`` of each class, drawn with ``split_seed``).

Images to classify: every image file under PATH, recursively, keyed by ``file`` (its path
relative to PATH). When every image sits in a first-level subfolder named like one of the
run's classes, that folder gives its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from riftune.data.files import IMAGE_SUFFIXES, decode_images
from riftune.data.formats.base import (
    DataFormat,
    ImageRequest,
    NewImages,
    SplitRequest,
    check_options,
    register,
)
from riftune.data.imagefolder import scan_imagefolder
from riftune.data.stored import LabelledSplits, labelled_files
from riftune.data.transforms import to_nchw
from riftune.errors import UserError


@register
class ImageFolder(DataFormat):
    """A folder of image files, one subfolder per class."""

    name = "imagefolder"
    prefix = "imagefolder:"
    precedence = 1
    form = "imagefolder:PATH"
    help = "imagefolder:PATH (train/, val/, test/ with one folder per class; or a folder's path)"

    def claims(self, value: str) -> bool:
        return Path(value).expanduser().is_dir()

    def splits(
        self, location: str, options: dict[str, str], request: SplitRequest
    ) -> LabelledSplits:
        check_options(self, options, ("val", "split_seed"))
        folder = Path(location).expanduser()
        table = scan_imagefolder(folder, **_split_options(options))
        return labelled_files(table, folder.name, str(folder), request.splits)

    def new_images(
        self, location: str, options: dict[str, str], request: ImageRequest
    ) -> NewImages:
        check_options(self, options, ())
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise UserError(f"--data {folder} is not a folder")
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )  # fmt: skip
        if not files:
            raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        lookup = {name: index for index, name in enumerate(request.names())}
        parents = [p.relative_to(folder).parts for p in files]
        labelled = all(len(parts) == 2 and parts[0] in lookup for parts in parents)
        return NewImages(
            to_nchw(decode_images(files, request.img_size)),
            {"file": [p.relative_to(folder).as_posix() for p in files]},
            np.array([lookup[parts[0]] for parts in parents]) if labelled else None,
        )


def _split_options(options: dict[str, str]) -> dict:
    """``val`` and ``split_seed`` as :func:`~riftune.data.imagefolder.scan_imagefolder` takes them."""
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
