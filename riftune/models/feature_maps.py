"""Intermediate feature maps of a backbone, taken in the same forward pass as its embeddings.

:class:`FeatureMapTap` registers forward hooks on named modules of a backbone and keeps what
they output, so a regularizer such as DELTA gets the maps of the very forward pass whose
embeddings feed the head: no second pass, gradients intact. Hooks live on the modules
themselves, so they fire whatever wraps the backbone (DistributedDataParallel, a classifier,
peft's ``PeftModel``). Layer names are resolved by suffix, because peft prefixes every name
(``blocks.3`` becomes ``base_model.model.blocks.3``).

Every map is returned channels first, ``(n, c, *spatial)``: NCHW maps as they are, token maps of
a ViT ``(n, tokens, d)`` as ``(n, d, tokens)``, and NHWC maps (timm models whose ``output_fmt``
is ``"NHWC"``, e.g. Swin) as ``(n, c, h, w)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn


def _timm_model(backbone: nn.Module) -> nn.Module | None:
    """The first module of ``backbone`` that carries timm's ``feature_info``, if any."""
    for module in backbone.modules():
        if isinstance(getattr(module, "feature_info", None), list):
            return module
    return None


def default_layers(backbone: nn.Module) -> list[str]:
    """Names of the modules whose outputs DELTA regularizes, for a timm backbone.

    From timm's ``feature_info`` (one entry per stage for CNNs, one per block for ViTs):

    - CNNs (EfficientNet, ResNet, ConvNeXt, ...: the entries' reductions differ): every entry,
      i.e. the output of the last block of each stage (for ResNet this includes the stem,
      ``act1``).
    - Token models (ViT, DeiT: every entry at the same reduction): the blocks at 1/4, 1/2, 3/4
      of the depth and the last one (blocks 3, 6, 9, 12 of a 12-block ViT).

    Args:
        backbone: a timm model, possibly wrapped (peft, a classifier); the names returned are
            relative to the timm model and resolve by suffix in :func:`resolve_layer`.

    Raises:
        ValueError: the backbone has no timm ``feature_info`` to choose from.
    """
    model = _timm_model(backbone)
    if model is None or not model.feature_info:
        raise ValueError(
            f"cannot choose feature-map layers for {type(backbone).__name__} (no timm "
            "feature_info); pass the module names explicitly (--delta-layers)"
        )
    info = model.feature_info
    names = [entry["module"] for entry in info]
    if len({entry["reduction"] for entry in info}) > 1:
        return names
    depth = len(names)
    picks = sorted({max(round(depth * k / 4), 1) - 1 for k in (1, 2, 3, 4)})
    return [names[i] for i in picks]


def resolve_layer(backbone: nn.Module, name: str) -> nn.Module:
    """The submodule of ``backbone`` called ``name``, or whose name ends with ``"." + name``.

    Among several suffix matches the one with the shortest full name wins (a peft prefix adds
    the same components to every name); two equally short matches are ambiguous.

    Raises:
        ValueError: no module matches, or the match is ambiguous.
    """
    matches = [
        (full, module)
        for full, module in backbone.named_modules()
        if full == name or full.endswith("." + name)
    ]
    if not matches:
        raise ValueError(
            f"the backbone has no module named {name!r}; use a name from "
            "backbone.named_modules() (peft prefixes are resolved automatically)"
        )
    shortest = min(len(full) for full, _ in matches)
    best = [(full, module) for full, module in matches if len(full) == shortest]
    if len(best) > 1:
        raise ValueError(
            f"layer name {name!r} is ambiguous ({', '.join(f for f, _ in best)}); "
            "give a longer name"
        )
    return best[0][1]


def is_nhwc(backbone: nn.Module) -> bool:
    """Whether the timm model inside ``backbone`` keeps its 4-D maps channels last."""
    model = _timm_model(backbone)
    return getattr(model, "output_fmt", "NCHW") == "NHWC"


def channel_axis(output: torch.Tensor, nhwc: bool) -> int:
    """The channel dimension of a layer output: 1 for NCHW maps, -1 for tokens or NHWC.

    Raises:
        ValueError: ``output`` is not a 3-D (tokens) or 4-D (image) tensor.
    """
    if not isinstance(output, torch.Tensor) or output.ndim not in (3, 4):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"a tapped layer returned {shape}; tap modules that output (n, c, h, w) maps or "
            "(n, tokens, c) token sequences"
        )
    return -1 if output.ndim == 3 or nhwc else 1


class FeatureMapTap:
    """Keeps the outputs of named backbone modules, one set per forward pass.

    Example::

        tap = FeatureMapTap(model.backbone, default_layers(model.backbone))
        out = ddp_model(images)
        maps = tap.pop()  # [(n, c_l, *spatial_l)], with gradient
        tap.close()

    Each hook keeps its module's latest output; :meth:`pop` hands over the set and clears it.
    A module that runs twice before :meth:`pop` keeps its last output.

    Args:
        backbone: the module to tap (plain timm model, peft model, or anything containing it).
        layers: module names, resolved by :func:`resolve_layer`.

    Shape:
        Each map: (n, c_l, *spatial_l), channels first (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str]):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("FeatureMapTap needs at least one layer name")
        self._nhwc = is_nhwc(backbone)
        self._outputs: dict[int, torch.Tensor] = {}
        modules = [resolve_layer(backbone, name) for name in self.layers]
        self._handles = [
            module.register_forward_hook(functools.partial(self._keep, index))
            for index, module in enumerate(modules)
        ]

    def _keep(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._outputs[index] = output.movedim(channel_axis(output, self._nhwc), 1)

    def pop(self) -> list[torch.Tensor]:
        """The maps of the last forward pass, in ``layers`` order; clears them.

        Raises:
            RuntimeError: some tapped module did not run since the last :meth:`pop`.
        """
        missing = [name for i, name in enumerate(self.layers) if i not in self._outputs]
        if missing:
            raise RuntimeError(
                f"no output from tapped layer(s) {', '.join(missing)} since the last pop(); "
                "run a forward pass of the tapped backbone first"
            )
        maps = [self._outputs[i] for i in range(len(self.layers))]
        self._outputs.clear()
        return maps

    def close(self) -> None:
        """Remove the hooks and drop any kept outputs."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs.clear()

    def __enter__(self) -> FeatureMapTap:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
