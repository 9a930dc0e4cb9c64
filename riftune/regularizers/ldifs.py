r"""LDIFS: L2 distance to the pretrained model's features at many layers, not only the last.

Mukhoti, Gal, Torr & Dokania, "Fine-tuning can cripple your foundation model; preserving
features may be the solution", TMLR 2024 (https://openreview.net/forum?id=kfhoeZCeW7,
arXiv https://arxiv.org/abs/2308.13320; reference code: omegafragger/ldifs_code,
``loss/ldifs.py``).

.. math::

    \Omega = \frac{1}{n}\sum_{i=1}^{n}\frac{1}{L}\sum_{l=1}^{L}\frac{1}{C_l S_l}
        \sum_{c,s}\big(\hat F_{l}(x_i)_{cs} - \hat F^0_{l}(x_i)_{cs}\big)^2,\qquad
    \hat F_{l}(x)_{\cdot s} = \frac{F_l(x)_{\cdot s}}{\lVert F_l(x)_{\cdot s}\rVert_2 + 10^{-10}}

F_l(x_i): the finetuned backbone's map at layer l, C_l channels by S_l positions (h·w, or
tokens), each position's channel vector scaled to unit length (LPIPS-style, as published);
F⁰ the same for the pretrained backbone, from a frozen teacher pass of the batch (with peft
methods the base model with adapters disabled). Squared differences are averaged over channels
and positions, then over the layers and the samples, as in the reference code (whose CLIP maps
are (n, tokens, d), normalised over their second axis; here every map is channels first, so the
unit vectors are the channel vectors the paper describes). The loss is task + λ·Ω; the
reference's weight is 10 (``--lam``'s default here). Feature distillation
(``--reg feature-distill``) is its one-layer, unnormalised case on the pooled embedding.

Layers: those of DELTA, :func:`riftune.models.feature_maps.default_layers` (the last block of
each timm stage for CNNs; blocks at 1/4, 1/2, 3/4 and the end of a ViT, the reference's four
block groups) unless ``--ldifs-layers`` names them. The reference is a teacher pass only: a
per-sample cache of every layer's maps is not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from riftune.models.feature_maps import default_layers
from riftune.options import Section, option
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register

NORM_EPS = 1e-10


def unit_channels(maps: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector scaled to unit L2 norm (+10⁻¹⁰ in the denominator).

    Shape:
        maps: (n, c, *spatial). Returns the same shape.
    """
    return maps / (maps.square().sum(1, keepdim=True).sqrt() + NORM_EPS)


class FeatureSpaceDistance(nn.Module):
    """Ω of LDIFS between finetuned and pretrained maps; formula in the module docstring.

    Shape:
        maps, maps0: lists of L tensors, the l-th (n, C_l, *spatial_l) in both. Returns a
        scalar (float32, outside autocast).

    Raises:
        ValueError: no layers, or lists or shapes that differ.
    """

    def forward(self, maps: Sequence[torch.Tensor], maps0: Sequence[torch.Tensor]) -> torch.Tensor:
        if not maps or len(maps) != len(maps0):
            raise ValueError(f"LDIFS needs L >= 1 pairs of maps; got {len(maps)} and {len(maps0)}")
        per_layer = []
        with torch.autocast(device_type=maps[0].device.type, enabled=False):
            for fm, fm0 in zip(maps, maps0, strict=True):
                if fm.shape != fm0.shape:
                    raise ValueError(
                        f"LDIFS pairs maps of one shape; got {tuple(fm.shape)} and "
                        f"{tuple(fm0.shape)}"
                    )
                difference = unit_channels(fm.float()) - unit_channels(fm0.detach().float())
                per_layer.append(difference.square().flatten(1).mean(1))  # (n,)
            return torch.stack(per_layer, 1).mean(1).mean(0)


@register
class LDIFS(Regularizer):
    """``--reg ldifs``: normalised multi-layer feature distance to the pretrained backbone.

    Attributes:
        feature_layers: the tapped module names (set by :meth:`prepare` when not given); the
            engine must tap these, in this order.

    Args:
        layers: module names to regularize; ``None`` picks :func:`default_layers`.
    """

    name = "ldifs"
    reference = "teacher"
    needs_feature_maps = True
    penalizes_features_only = True
    splits_over_micro_batches = True
    default_lam = 10.0  # the reference code's weight

    @dataclass
    class Options(Section):
        """``--ldifs-*``."""

        flag_prefix: ClassVar[str] = "ldifs"
        layers: str | None = option(
            None,
            "ldifs: comma-separated backbone module names whose outputs are kept close to the "
            "pretrained ones (default: DELTA's, the last block of each timm stage; ViT blocks "
            "at 1/4, 1/2, 3/4, end)",
        )

    def __init__(self, layers: Sequence[str] | None = None):
        super().__init__()
        self.feature_layers: list[str] = list(layers or [])
        self.distance = FeatureSpaceDistance()

    @classmethod
    def from_options(cls, options: Options, dim: int) -> LDIFS:
        layers = [n.strip() for n in options.layers.split(",")] if options.layers else None
        return cls(layers=layers)

    def prepare(self, pretrained: PretrainedView) -> None:
        """Choose the layers when none were given."""
        if not self.feature_layers:
            self.feature_layers = default_layers(pretrained.model.backbone)

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Ω for one step, from ``step.feature_maps`` and the teacher's maps.

        Shape:
            step.feature_maps[l], step.reference_feature_maps[l]: (n, C_l, *spatial_l).

        Raises:
            ValueError: maps missing, or not one per prepared layer.
        """
        maps, reference = step.feature_maps, step.reference_feature_maps
        if maps is None or reference is None:
            raise ValueError(
                "--reg ldifs needs the finetuned and pretrained feature maps in StepInputs"
            )
        if not len(maps) == len(reference) == len(self.feature_layers):
            raise ValueError(
                f"--reg ldifs was prepared for {len(self.feature_layers)} layers "
                f"({', '.join(self.feature_layers)}); got {len(maps)} finetuned and "
                f"{len(reference)} pretrained maps"
            )
        return self.distance(maps, reference)

    def get_extra_state(self) -> dict:
        return {"feature_layers": list(self.feature_layers)}

    def set_extra_state(self, state: dict) -> None:
        self.feature_layers = list(state["feature_layers"])
