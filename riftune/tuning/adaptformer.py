"""AdaptFormer (Chen et al. 2022, arXiv 2205.13535): a parallel bottleneck adapter beside each ViT MLP."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.options import Section, option, positive
from riftune.tuning.base import FinetuningMethod, eval_mode, is_head, register
from riftune.tuning.vit import require_vit

ADAPTER_ATTR = "adaptformer"
"""Each block's adapter lives at ``blocks.<i>.adaptformer``."""


class ParallelAdapter(nn.Module):
    """AdaptMLP: ``s * ReLU(x W_down + b_down) W_up + b_up``, added to the MLP's output.

    Chen et al., eq. (2)-(3): with ``x = LN(x')`` the MLP's input,
    ``x_out = x' + MLP(x) + s * ReLU(x W_down) W_up``. The up-projection starts at zero, so
    the block starts as the pretrained one. Installed as a forward hook on the block's ``mlp``,
    so the ViT's own parameter names are unchanged; in timm blocks with LayerScale the sum
    then passes through the MLP branch's LayerScale and DropPath too (identical to the paper
    for ViTs without LayerScale). With ``enabled`` false the block is the plain one.

    Args:
        mlp: the block's MLP; the adapter hooks onto it.
        dim: the token width (the MLP's input and output size).
        bottleneck: the hidden size of the adapter.
        scale: s.
    """

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int, scale: float):
        super().__init__()
        reference = next(mlp.parameters())
        factory = {"device": reference.device, "dtype": reference.dtype}
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim, **factory)
        self.scale = scale
        self.enabled = True
        # The AdaptFormer reference code: LoRA-style init of the down projection, zeros after.
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        mlp.register_forward_hook(self._add_to_mlp_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter branch alone. Shape: x (n, tokens, dim) -> (n, tokens, dim)."""
        return self.up(self.act(self.down(x))) * self.scale

    def _add_to_mlp_output(
        self, mlp: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.enabled:
            return None
        return output + self(args[0])

    def extra_repr(self) -> str:
        return f"scale={self.scale}, enabled={self.enabled}"


@register
class AdaptFormer(FinetuningMethod):
    """One :class:`ParallelAdapter` per ViT block; adapters and head train, the ViT is frozen.

    Args:
        dim: the adapter's bottleneck size.
        scale: s, the factor on the adapter's output.
    """

    name = "adaptformer"

    def __init__(self, dim: int = 64, scale: float = 0.1):
        self.Options(dim=dim, scale=scale)  # checks the values
        self.dim = dim
        self.scale = scale

    @dataclass
    class Options(Section):
        """``--adapter-*``."""

        flag_prefix: ClassVar[str] = "adapter"
        dim: int = option(64, "adaptformer: bottleneck size of each adapter", check=positive)
        scale: float = option(0.1, "adaptformer: factor s on the adapter output")

    def apply(self, model: Classifier) -> None:
        vit = require_vit(model.backbone, self.name)
        for block in vit.blocks:
            if hasattr(block, ADAPTER_ATTR):
                raise ValueError("AdaptFormer is already applied to this model; call apply() once")
            adapter = ParallelAdapter(block.mlp, vit.embed_dim, self.dim, self.scale)
            setattr(block, ADAPTER_ATTR, adapter)

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name) or self.is_new(name)

    def is_new(self, name: str) -> bool:
        return f".{ADAPTER_ATTR}." in name

    def pretrained_forward(self, model: Classifier) -> AbstractContextManager[None]:
        return _adapters_off(model.backbone)

    def merged_backbone_state(self, model: Classifier) -> dict[str, torch.Tensor]:
        raise UserError(
            "WiSE-FT does not apply to --method adaptformer: its adapters have no counterpart "
            "in the pretrained ViT to interpolate with; use it with full, linear, bitfit, lora "
            "or lp-ft"
        )


@contextmanager
def _adapters_off(vit: nn.Module) -> Iterator[None]:
    adapters = [m for m in vit.modules() if isinstance(m, ParallelAdapter)]
    modes = [a.enabled for a in adapters]
    for adapter in adapters:
        adapter.enabled = False
    try:
        with eval_mode(vit):
            yield
    finally:
        for adapter, enabled in zip(adapters, modes, strict=True):
            adapter.enabled = enabled
