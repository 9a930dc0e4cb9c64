"""LoRA (Hu et al. 2022, arXiv 2106.09685) on the backbone's linear and convolution layers, via peft."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.options import Section, option, positive
from riftune.tuning.base import BackboneWeight, is_head, register
from riftune.tuning.peft_adapter import PeftAdapterMethod

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

LORA_MARKER = ".lora_"
"""Every parameter peft adds has a ``lora_`` component (``lora_A``, ``lora_B``) in its name."""


def lora_targets(backbone: nn.Module) -> list[str]:
    """Names of the backbone's layers LoRA adapts.

    Every ``nn.Linear`` (except those inside ``nn.MultiheadAttention``, which reads their
    weights directly and would bypass the adapter), and every plain ``nn.Conv2d`` with
    ``groups == 1``. Not targeted: grouped and depthwise convolutions, since peft's LoRA for
    them needs the rank to be divisible by the number of groups and cannot be merged (so
    EfficientNet's depthwise 3x3/5x5 convolutions stay frozen), and ``nn.Conv2d``
    subclasses such as timm's ``Conv2dSame``, whose dynamic padding peft's LoRA branch
    would not reproduce.
    """
    inside_mha = {
        f"{name}.{child}" if name else child
        for name, module in backbone.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_modules()
    }
    return [
        name
        for name, module in backbone.named_modules()
        if (isinstance(module, nn.Linear) and name not in inside_mha)
        or (type(module) is nn.Conv2d and module.groups == 1)
    ]


@register
class LoRA(PeftAdapterMethod):
    """Low-rank updates ``W + (alpha / r) B A`` on :func:`lora_targets`, the head trainable.

    ``B`` starts at zero, so the model starts as the pretrained one. The backbone's own
    weights are frozen and its BatchNorm layers stay in eval mode (running statistics
    pretrained), so ``disable_adapter()`` gives back the pretrained function at any time:
    that is the teacher pass. :meth:`merged_backbone_state` merges ``B A`` into the weights.
    ``model.backbone`` becomes a ``peft.PeftModel`` around the original backbone (its
    attributes are still reachable through it).

    Args:
        rank: r, the rank of each update.
        alpha: the scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout on the LoRA branch's input.
    """

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        self.Options(rank=rank, alpha=alpha, dropout=dropout)  # checks the values
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout

    @dataclass
    class Options(Section):
        """``--lora-*``: the shape of each low-rank update."""

        flag_prefix: ClassVar[str] = "lora"
        rank: int = option(8, "lora: rank r of each update", check=positive)
        alpha: float = option(16.0, "lora: alpha; updates are scaled by alpha / r")
        dropout: float = option(
            0.0, "lora: dropout on the LoRA branch input",
            check=lambda p: None if 0.0 <= p < 1.0 else "must be in [0, 1)",
        )  # fmt: skip

    def apply(self, model: Classifier) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model.backbone, PeftModel):
            raise ValueError("LoRA is already applied to this model; call apply() once")
        targets = lora_targets(model.backbone)
        if not targets:
            raise UserError(
                f"--method lora found no nn.Linear or ungrouped nn.Conv2d in the "
                f"{type(model.backbone).__name__} backbone; choose another --method"
            )
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
        )
        model.backbone = get_peft_model(model.backbone, config)

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name) or self.is_new(name)

    def is_new(self, name: str) -> bool:
        return LORA_MARKER in name

    def backbone_weights(self, model: Classifier) -> list[BackboneWeight]:
        """The plain architecture's weights; each adapted layer's as W₀ + ΔW.

        Names lose peft's ``base_model.model.`` prefix and ``.base_layer`` segments
        (:func:`canonical_name`), so they match a snapshot of the backbone before
        :meth:`apply`. The factors A and B are left out: they enter through ΔW = s·BA of the
        active, unmerged adapters (:func:`adapter_delta`, read at each call of ``delta``;
        a merged adapter is already inside W₀). A DoRA adapter's ``delta`` raises ValueError:
        its effective weight is not W₀ + ΔW.
        """
        from peft.tuners.lora import LoraLayer

        backbone = model.backbone
        layers = {
            canonical_name(name) + ".weight": module
            for name, module in backbone.named_modules()
            if isinstance(module, LoraLayer)
        }
        factors = {id(p) for layer in layers.values() for p in layer.parameters()}
        factors -= {id(p) for layer in layers.values() for p in layer.get_base_layer().parameters()}
        weights = []
        for name, param in backbone.named_parameters():
            if id(param) in factors:
                continue
            key = canonical_name(name)
            layer = layers.get(key)
            weights.append(
                BackboneWeight(key, param, None if layer is None else partial(adapter_delta, layer))
            )
        return weights


def canonical_name(name: str) -> str:
    """A parameter name without peft's wrapping (``base_model.model.`` and ``.base_layer``)."""
    parts = [part for part in name.split(".") if part != "base_layer"]
    return ".".join(parts).removeprefix("base_model.model.")


def adapter_delta(layer: LoraLayer) -> torch.Tensor | None:
    """ΔW of the active, unmerged LoRA adapters of ``layer`` (``None`` when there is none).

    Shape:
        That of the base layer's weight.

    Raises:
        ValueError: an active adapter uses DoRA.
    """
    if layer.merged or layer.disable_adapters:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A or a in layer.lora_embedding_A]
    if any(layer.use_dora.get(a, False) for a in active):
        raise ValueError(
            "a DoRA adapter's effective weight is not W₀ + ΔW; --reg l2sp supports plain LoRA, "
            "not DoRA: drop use_dora or the l2sp reg"
        )
    deltas = [layer.get_delta_weight(a) for a in active]
    return torch.stack(deltas).sum(0) if deltas else None
