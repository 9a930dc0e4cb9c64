"""The registry of data formats: what a format declares, and the one function that reads
a ``--data`` value.

A ``--data`` value is ``[PREFIX:]LOCATION[?key=value&...]``. :func:`resolve` finds its format:
the one whose ``prefix`` it starts with, else the first (by ``precedence``) whose
:meth:`DataFormat.claims` accepts the bare value (a MedMNIST flag, an image folder, a ``.csv``
or a ``.npz`` file). The format then loads labelled splits (``finetune``, ``--transfer-data``)
or images to classify (``predict``).
"""

from __future__ import annotations

import os
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from riftune.data.splits import SPLITS
from riftune.data.stored import LabelledSplits
from riftune.errors import UserError
from riftune.registry import Registry


@dataclass(frozen=True)
class SplitRequest:
    """What loading labelled splits needs besides the ``--data`` value.

    Attributes:
        data_root: first folder to look for MedMNIST files in (and to download them to).
        download: download a missing MedMNIST file (otherwise say where to put it).
        group_column: a table's column whose rows stay in one split (a patient).
        label_columns: a table's 0/1 columns of a multi-label task.
        splits: the splits to read; a cross-validation fold reads train and val only, so
            the test split's arrays are never loaded and its image files never decoded.
    """

    data_root: str | os.PathLike | None = None
    download: bool = True
    group_column: str | None = None
    label_columns: Sequence[str] | None = None
    splits: tuple[str, ...] = SPLITS


@dataclass(frozen=True)
class ImageRequest:
    """What loading images to classify needs besides the ``--data`` value: the run's side.

    Attributes:
        img_size: side S the run's model sees.
        class_names: the run's class names, when its data named them.
        num_classes: the run's class count K.
        data_root: first folder to look for MedMNIST files in.
    """

    img_size: int
    class_names: Sequence[str] | None
    num_classes: int
    data_root: str | os.PathLike | None = None

    def names(self) -> list[str]:
        """The name of each class index: the run's names, else ``"0" .. "K-1"``."""
        return (
            list(self.class_names)
            if self.class_names
            else [str(i) for i in range(self.num_classes)]
        )


@dataclass
class NewImages:
    """Images to classify, resized but not yet normalized.

    Attributes:
        pixels: uint8. Shape: (N, C, S, S), C ∈ {1, 3}.
        keys: the leading columns of the predictions CSV (``split``/``index`` or ``file``).
        labels: class indices when the source has them. Shape: (N,) int64.
    """

    pixels: torch.Tensor
    keys: dict[str, list]
    labels: np.ndarray | None


class DataFormat(ABC):
    """One way to give data: how a ``--data`` value is recognised and how it loads.

    Class attributes:
        name: the format's name, for the registry and messages.
        prefix: the ``--data`` prefix that names the format (``"csv:"``), if it has one.
        precedence: the order in which formats try a value without a prefix (lower first),
            and the order of the ``--data`` help.
        form: the format's part of the ``--data`` forms listed in messages, a few words.
        help: the format's part of the ``--data`` help.
        table_columns: whether ``--group-column`` and ``--label-columns`` apply.
    """

    name: ClassVar[str]
    prefix: ClassVar[str | None] = None
    precedence: ClassVar[int]
    form: ClassVar[str]
    help: ClassVar[str]
    table_columns: ClassVar[bool] = False

    def claims(self, value: str) -> bool:
        """Whether ``value``, given without a prefix, is data in this format."""
        return False

    @abstractmethod
    def splits(
        self, location: str, options: dict[str, str], request: SplitRequest
    ) -> LabelledSplits:
        """Load the labelled train/val/test splits at ``location``.

        Raises:
            UserError: unknown options, a missing or invalid source, bad labels.
        """

    @abstractmethod
    def new_images(
        self, location: str, options: dict[str, str], request: ImageRequest
    ) -> NewImages:
        """Load images to classify at ``location``, with their labels where the source has them.

        Raises:
            UserError: unknown options, a missing or invalid source, labels that are not the
                run's classes.
        """


FORMATS: Registry[DataFormat] = Registry("data format")


def register(cls: type[DataFormat]) -> type[DataFormat]:
    """Class decorator: register one instance of a :class:`DataFormat` under its name."""
    FORMATS.add(cls.name, cls())
    return cls


def formats() -> list[DataFormat]:
    """The registered formats in precedence order."""
    return sorted((FORMATS.get(name) for name in FORMATS.available()), key=lambda f: f.precedence)


def forms_help(brief: bool = False) -> str:
    """Every registered form of ``--data``: each format's ``help``, or ``form`` when ``brief``
    (for messages)."""
    parts = [fmt.form if brief else fmt.help for fmt in formats()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)


@dataclass(frozen=True)
class DataSpec:
    """A ``--data`` value read: its format, the location and the options after ``?``."""

    format: DataFormat
    location: str
    options: dict[str, str]

    def splits(self, request: SplitRequest) -> LabelledSplits:
        """The labelled splits (see :meth:`DataFormat.splits`)."""
        return self.format.splits(self.location, self.options, request)

    def new_images(self, request: ImageRequest) -> NewImages:
        """Images to classify (see :meth:`DataFormat.new_images`)."""
        return self.format.new_images(self.location, self.options, request)


def resolve(spec: str) -> DataSpec:
    """Read a ``--data`` value: every command resolves its data here.

    Raises:
        UserError: options that cannot be parsed, or a value no format accepts; the message
            lists the forms the registry accepts.
    """
    body, options = split_options(spec)
    for fmt in formats():
        if fmt.prefix and body.startswith(fmt.prefix):
            return DataSpec(fmt, body.removeprefix(fmt.prefix), options)
    for fmt in formats():
        if fmt.claims(body):
            return DataSpec(fmt, body, options)
    raise UserError(f"unknown dataset {spec!r}; give {forms_help(brief=True)}")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``(body, options)`` of ``BODY?key=value&...``; a ``?`` without ``=`` after it is kept."""
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


def check_options(fmt: DataFormat, options: dict[str, str], valid: Sequence[str]) -> None:
    """Refuse options outside ``valid`` (all of them when ``valid`` is empty).

    Raises:
        UserError: an option ``fmt`` does not take here; the message lists those it takes.
    """
    unknown = sorted(set(options) - set(valid))
    if unknown and not valid:
        raise UserError(f"{fmt.name} data takes no options after '?' here; got {unknown}")
    if unknown:
        raise UserError(f"unknown {fmt.name} option(s) {unknown}; valid: {', '.join(valid)}")
