"""The registry of data formats: every command reads ``--data`` through :func:`resolve`.

Each module here is one format (a MedMNIST flag, a ``.npz`` file, an image folder, a CSV
table): a :class:`DataFormat` registered with :func:`register`, which declares its prefix, how
a value without a prefix is recognised, its help text, how it loads labelled splits
(``finetune``, ``--transfer-data``, ``tune``) and images to classify (``predict``). Every
module of this package is imported here, so adding a format is adding one file. Formats may
import :mod:`riftune.data`'s readers and :mod:`riftune.errors`, nothing above them.
"""

import importlib
import pkgutil

from riftune.data.formats.base import (
    DataFormat,
    DataSpec,
    ImageRequest,
    NewImages,
    SplitRequest,
    check_options,
    formats,
    forms_help,
    register,
    resolve,
    split_options,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DataFormat",
    "DataSpec",
    "ImageRequest",
    "NewImages",
    "SplitRequest",
    "check_options",
    "formats",
    "forms_help",
    "register",
    "resolve",
    "split_options",
]
