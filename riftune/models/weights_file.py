"""Start a backbone from a local weights file (``--pretrained-file PATH``).

The file is a safetensors file or a ``torch.save``'d state dict, read with
``torch.load(weights_only=True)`` (tensors only, nothing unpickled that could run code). It may
hold the backbone's own state dict, a whole timm model's (its classifier is ignored) or a riftune
classifier's (``backbone.*`` and ``head.*``; a run's checkpoint adds ``model/``; a
DistributedDataParallel one ``module.``). Keys are matched by name after those prefixes; a
tensor whose shape differs from the architecture's refuses the file, and so does a file none of
whose tensors the architecture has. Missing and unexpected keys are reported, in one line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from riftune.errors import UserError

log = logging.getLogger(__name__)

_WRAPPERS = ("model/", "module.")  # a riftune checkpoint's state key; DistributedDataParallel's


@dataclass(frozen=True)
class LoadReport:
    """What loading a weights file into a backbone did.

    Attributes:
        path: the file.
        loaded: how many tensors were loaded.
        missing: backbone keys the file lacks (they keep their random initialization).
        unexpected: file keys the backbone does not have (not loaded).
        ignored_head: the file's classifier keys, left out on purpose (a fresh head is used).
    """

    path: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored_head: tuple[str, ...]

    def summary(self) -> str:
        """One line: counts, and the first few names of each kind."""

        def names(keys: tuple[str, ...]) -> str:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            return f"{len(keys)} ({shown})" if keys else "0"

        return (
            f"loaded {self.loaded} tensors from {self.path}; missing {names(self.missing)}; "
            f"unexpected {names(self.unexpected)}; classifier ignored {names(self.ignored_head)}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a ``weights_only`` ``torch.load`` state dict.

    Raises:
        UserError: a missing file, a file neither format can read (corrupt, truncated, a
            pickle of arbitrary objects), or one that does not hold a mapping of names to
            tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--pretrained-file {path} does not exist; check the path")
    with path.open("rb") as handle:
        head = handle.read(8)
    try:
        if path.suffix == ".safetensors" or _looks_like_safetensors(head, path.stat().st_size):
            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to parse an untrusted file is the file's fault
        raise UserError(
            f"--pretrained-file {path} is neither a safetensors file nor a weights-only torch "
            f"state dict (it is corrupt, truncated or holds other objects; {type(err).__name__})"
        ) from err
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} wrapper
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise UserError(
            f"--pretrained-file {path} does not hold a state dict (a mapping of names to "
            f"tensors); got {type(state).__name__}"
        )
    return dict(state)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little endian), then '{'."""
    return len(head) == 8 and 0 < int.from_bytes(head, "little") < size


def load_backbone_weights(
    backbone: nn.Module, path: str | os.PathLike, name: str = "the backbone"
) -> LoadReport:
    """Load a weights file into ``backbone`` in place, by key name.

    Args:
        backbone: a timm backbone built with ``num_classes=0``.
        path: the weights file (see the module docstring for the layouts accepted).
        name: the architecture's name, for messages.

    Returns:
        What was loaded, missing, unexpected and ignored.

    Raises:
        UserError: the file cannot be read or is no state dict; a tensor's shape differs
            from the architecture's; or none of the file's tensors belongs to it.
    """
    state = read_state_dict(path)
    for wrapper in _WRAPPERS:
        if all(key.startswith(wrapper) for key in state):
            state = {key.removeprefix(wrapper): value for key, value in state.items()}
    own = backbone.state_dict()
    if any(key.startswith("backbone.") for key in state):  # a riftune Classifier's
        state = {key.removeprefix("backbone."): value for key, value in state.items()}
        head_prefixes: tuple[str, ...] = ("head.",)
    else:  # the backbone's own keys, or a whole timm model's
        head_prefixes = _timm_classifier_prefixes(backbone)
    ignored = sorted(key for key in state if key not in own and key.startswith(head_prefixes))
    fitting = {key: value for key, value in state.items() if key in own}
    wrong = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in fitting.items()
        if value.shape != own[key].shape
    ]
    if wrong:
        raise UserError(
            f"--pretrained-file {path} does not fit {name}: {len(wrong)} tensors have other "
            f"shapes (file vs model), e.g. {wrong[0]}; choose the --backbone it was saved from"
        )
    if not fitting:
        raise UserError(
            f"--pretrained-file {path} does not fit {name}: none of its {len(state)} tensors "
            f"(e.g. {next(iter(state))}) is one of the model's (e.g. {next(iter(own))}); "
            "choose the --backbone it was saved from"
        )
    backbone.load_state_dict(fitting, strict=False)
    report = LoadReport(
        path=str(path),
        loaded=len(fitting),
        missing=tuple(key for key in own if key not in fitting),
        unexpected=tuple(sorted(set(state) - set(fitting) - set(ignored))),
        ignored_head=tuple(ignored),
    )
    log.info("%s", report.summary())
    return report


def _timm_classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier a whole timm model of this architecture has."""
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or "classifier"
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{part}." for part in names)
