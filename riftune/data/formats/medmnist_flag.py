"""A MedMNIST 2D flag: ``--data breastmnist`` (28×28), ``breastmnist_64``, ``retinamnist_128``.

The flag's official file is looked up in ``--data-root``, ``$RIFTUNE_DATA`` and
``~/.medmnist`` and downloaded with an MD5 check when missing (:mod:`riftune.data.medmnist`);
it then loads as a ``.npz`` file (:mod:`.npz_file`) with the flag's class names. Images to
classify are every split of the file, keyed by ``split`` and ``index``.
"""

from __future__ import annotations

from riftune.data import medmnist
from riftune.data.formats.base import (
    DataFormat,
    ImageRequest,
    NewImages,
    SplitRequest,
    check_options,
    register,
)
from riftune.data.formats.npz_file import npz_new_images, npz_splits
from riftune.data.stored import LabelledSplits


@register
class MedMNISTFlag(DataFormat):
    """A MedMNIST 2D dataset by name, with an optional image size suffix."""

    name = "medmnist"
    precedence = 0
    form = "a MedMNIST flag (e.g. breastmnist, breastmnist_64)"
    help = (
        "a MedMNIST 2D flag with optional size (breastmnist, breastmnist_64, pneumoniamnist, "
        "retinamnist_128, ...)"
    )

    def claims(self, value: str) -> bool:
        return medmnist.is_flag(value)

    def splits(
        self, location: str, options: dict[str, str], request: SplitRequest
    ) -> LabelledSplits:
        check_options(self, options, ())
        known = medmnist.parse_flag(location)
        return npz_splits(
            medmnist.locate(known, request.data_root, request.download), known, request.splits
        )

    def new_images(
        self, location: str, options: dict[str, str], request: ImageRequest
    ) -> NewImages:
        check_options(self, options, ())
        known = medmnist.parse_flag(location)
        return npz_new_images(medmnist.locate(known, request.data_root), request)
