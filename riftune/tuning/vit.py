"""What the ViT-only methods (VPT, AdaptFormer) share: the check that the backbone is a ViT."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from riftune.errors import UserError


def require_vit(backbone: nn.Module, method: str) -> VisionTransformer:
    """``backbone`` as a timm ``VisionTransformer``; UserError naming ``method`` otherwise."""
    if not isinstance(backbone, VisionTransformer):
        raise UserError(
            f"--method {method} needs a ViT backbone (timm VisionTransformer, e.g. "
            f"--backbone timm:vit_base_patch16_224), got {type(backbone).__name__}; "
            "use another --method for this backbone"
        )
    return backbone
