r"""OFT: orthogonal finetuning (Qiu et al., NeurIPS 2023, arXiv 2306.07280), via peft.

Each adapted layer's weight W (out × in) becomes W·R with R = diag(R₁, ..., R_{in/b}) block
diagonal, every block an orthogonal b × b matrix from the Cayley transform of a trainable
skew-symmetric matrix (peft's ``OFTConfig``; its default Cayley-Neumann series approximates the
inverse with 5 terms). The parameters start at zero, R = I: the model starts as the pretrained
one, and turning the adapters off gives it back exactly. An orthogonal R keeps the angles
between the layer's input neurons (the "hyperspherical energy"), the property OFT is built on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.options import Section, option, positive_finite
from riftune.tuning.base import is_head, register
from riftune.tuning.lora import lora_targets
from riftune.tuning.peft_adapter import PeftAdapterMethod

OFT_MARKER = ".oft_"
"""Every parameter peft's OFT adds has an ``oft_`` component (``oft_R``) in its name."""


def oft_targets(backbone: nn.Module) -> list[str]:
    """Names of the backbone's layers OFT adapts: every ``nn.Linear`` and 1×1 convolution.

    The linear layers and plain ungrouped convolutions of :func:`~riftune.tuning.lora.lora_targets`,
    less the convolutions with a kernel larger than 1×1 (EfficientNet's stem, a ViT's patch
    embedding): peft (0.21) rotates the unfolded input of those, which on a strided or padded
    convolution does not compute what the merged weight W·R computes, so the adapted model and
    its merged weights would disagree. A 1×1 convolution is a linear map per pixel, exact.
    """
    return [
        name
        for name in lora_targets(backbone)
        if not isinstance(module := backbone.get_submodule(name), nn.Conv2d)
        or (module.kernel_size == (1, 1) and module.dilation == (1, 1))
    ]


@register
class OFT(PeftAdapterMethod):
    """Block-diagonal orthogonal rotations of the inputs of :func:`oft_targets`, head trainable.

    Like LoRA: the backbone's own weights are frozen and its BatchNorm layers stay in eval mode,
    so ``disable_adapter()`` gives back the pretrained function at any time (the teacher pass),
    and :meth:`merged_backbone_state` folds R into the weights. ``model.backbone`` becomes a
    ``peft.PeftModel`` around the original backbone.

    Args:
        block_size: b, the side of each orthogonal block; a layer whose input size is not a
            multiple of b gets peft's nearest divisor of it (ties to the smaller).
        module_dropout: probability that a block is replaced by the identity while training
            (peft's multiplicative dropout).
        coft: constrained OFT: after each update, project every block's parameters back to
            within ``coft_eps`` of zero (R stays near I).
        coft_eps: the radius of that constraint (peft's ``eps``).
    """

    name = "oft"

    @dataclass
    class Options(Section):
        """``--oft-*``."""

        flag_prefix: ClassVar[str] = "oft"
        block_size: int = option(
            32,
            "oft: side of each orthogonal block; a layer whose input size is no multiple gets "
            "the nearest divisor",
            check=lambda v: None if v >= 2 else "must be >= 2",
        )
        module_dropout: float = option(
            0.0,
            "oft: chance of replacing a block by the identity while training",
            flag="--oft-dropout",
            check=lambda v: None if 0.0 <= v < 1.0 else "must be in [0, 1)",
        )
        coft: bool = option(
            False, "oft: constrained OFT, keep each rotation within --oft-coft-eps of I"
        )
        coft_eps: float = option(6e-5, "oft: the radius of that constraint", check=positive_finite)

    def __init__(
        self,
        block_size: int = 32,
        module_dropout: float = 0.0,
        coft: bool = False,
        coft_eps: float = 6e-5,
    ):
        self.Options(block_size, module_dropout, coft, coft_eps)  # checks the values
        self.block_size = block_size
        self.module_dropout = module_dropout
        self.coft = coft
        self.coft_eps = coft_eps

    def apply(self, model: Classifier) -> None:
        from peft import OFTConfig, PeftModel, get_peft_model

        if isinstance(model.backbone, PeftModel):
            raise ValueError("OFT is already applied to this model; call apply() once")
        targets = oft_targets(model.backbone)
        if not targets:
            raise UserError(
                f"--method oft found no nn.Linear or 1x1 nn.Conv2d in the "
                f"{type(model.backbone).__name__} backbone; choose another --method"
            )
        config = OFTConfig(
            r=0,
            oft_block_size=self.block_size,
            module_dropout=self.module_dropout,
            coft=self.coft,
            eps=self.coft_eps,
            target_modules=targets,
            bias="none",
        )
        with warnings.catch_warnings():  # peft warns for every layer whose size it adjusts
            warnings.filterwarnings("ignore", message="Invalid `oft_block_size`")
            model.backbone = get_peft_model(model.backbone, config)

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name) or self.is_new(name)

    def is_new(self, name: str) -> bool:
        return OFT_MARKER in name
