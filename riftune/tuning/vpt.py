"""Visual Prompt Tuning (Jia et al. 2022, arXiv 2203.12119): learnable prompt tokens in a frozen ViT."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.options import Section, option, positive
from riftune.tuning.base import FinetuningMethod, eval_mode, is_head, register
from riftune.tuning.vit import require_vit

VPTMode = Literal["shallow", "deep"]
PROMPTS_ATTR = "vpt"
"""The prompts live at ``backbone.vpt`` (parameter ``backbone.vpt.prompts``)."""


class VisualPrompts(nn.Module):
    """Prompt tokens inserted into a timm ``VisionTransformer``'s token sequence.

    The sequence entering block 0 becomes ``[prefix, P_0, patches]`` (prefix: class and
    register tokens; prompts carry no position embedding). ``shallow``: ``P_0`` is the only
    prompt and its outputs pass through all blocks. ``deep``: before every block ``i > 0`` the
    prompt positions are overwritten with that block's own ``P_i``. After the last block the
    prompt positions are dropped, so the final norm and timm's pooling (class token or average
    of patch tokens) see the original layout. Installed as forward hooks on the blocks, so the
    ViT's own parameter names are unchanged. With ``enabled`` false the ViT is the plain one.

    Shape:
        prompts: (depth or 1, tokens, embed_dim).
    """

    def __init__(self, vit: VisionTransformer, tokens: int, mode: VPTMode):
        super().__init__()
        depth, dim = len(vit.blocks), vit.embed_dim
        reference = vit.patch_embed.proj.weight
        self.prompts = nn.Parameter(
            torch.empty(
                depth if mode == "deep" else 1,
                tokens,
                dim,
                device=reference.device,
                dtype=reference.dtype,
            )
        )
        # Jia et al.: uniform Xavier init over (3 * patch area + embed_dim).
        patch_area = math.prod(vit.patch_embed.patch_size)
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.enabled = True
        for i, block in enumerate(vit.blocks):
            if i == 0 or mode == "deep":
                block.register_forward_pre_hook(partial(self._before_block, i))
        vit.blocks[-1].register_forward_hook(self._after_last_block)

    @property
    def tokens(self) -> int:
        """Number of prompt tokens per block."""
        return self.prompts.shape[1]

    def _before_block(
        self, index: int, block: nn.Module, args: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        if not self.enabled:
            return None
        x, rest = args[0], args[1:]
        start = self.num_prefix_tokens
        replaced = 0 if index == 0 else self.tokens  # block 0 inserts, later blocks overwrite
        prompts = self.prompts[index].to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :start], prompts, x[:, start + replaced :]], dim=1)
        return (x, *rest)

    def _after_last_block(
        self, block: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self.enabled:
            return None
        start = self.num_prefix_tokens
        return torch.cat([output[:, :start], output[:, start + self.tokens :]], dim=1)

    def extra_repr(self) -> str:
        blocks, tokens, dim = self.prompts.shape
        return f"prompts for {blocks} block(s) x {tokens} tokens x {dim}, enabled={self.enabled}"


@register
class VPT(FinetuningMethod):
    """Prompt tokens and the head train; the ViT stays frozen.

    Args:
        tokens: prompt tokens per block.
        mode: ``shallow`` (prompts before the first block only) or ``deep`` (every block).
    """

    name = "vpt"

    def __init__(self, tokens: int = 10, mode: VPTMode = "shallow"):
        self.Options(tokens=tokens, mode=mode)  # checks the values
        self.tokens = tokens
        self.mode = mode

    @dataclass
    class Options(Section):
        """``--vpt-*``."""

        flag_prefix: ClassVar[str] = "vpt"
        tokens: int = option(10, "vpt: prompt tokens per block", check=positive)
        mode: Literal["shallow", "deep"] = option(
            "shallow", "vpt: prompts before the first block only (shallow) or every block (deep)"
        )

    def apply(self, model: Classifier) -> None:
        vit = require_vit(model.backbone, self.name)
        if hasattr(vit, PROMPTS_ATTR):
            raise ValueError("VPT is already applied to this model; call apply() once")
        setattr(vit, PROMPTS_ATTR, VisualPrompts(vit, self.tokens, self.mode))

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name) or self.is_new(name)

    def is_new(self, name: str) -> bool:
        return name.startswith(f"backbone.{PROMPTS_ATTR}.")

    def pretrained_forward(self, model: Classifier) -> AbstractContextManager[None]:
        return _prompts_off(model.backbone)

    def merged_backbone_state(self, model: Classifier) -> dict[str, torch.Tensor]:
        raise UserError(
            "WiSE-FT does not apply to --method vpt: its prompt tokens have no counterpart in "
            "the pretrained ViT to interpolate with; use it with full, linear, bitfit, lora or lp-ft"
        )


@contextmanager
def _prompts_off(vit: nn.Module) -> Iterator[None]:
    prompts: VisualPrompts = getattr(vit, PROMPTS_ATTR)
    enabled = prompts.enabled
    prompts.enabled = False
    try:
        with eval_mode(vit):
            yield
    finally:
        prompts.enabled = enabled
