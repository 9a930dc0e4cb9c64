r"""DELTA: channel-attention-weighted distance to the pretrained model's intermediate feature maps.

Li, Xiong, Wang, Huan, Liu, Xu, Chen & Huan, "DELTA: DEep Learning Transfer using Feature Map
with Attention for Convolutional Networks", ICLR 2019, https://openreview.net/forum?id=rkgbwsAcYm
(arXiv https://arxiv.org/abs/1901.09229).

.. math::

    \Omega = \frac{1}{n}\sum_{i=1}^{n}\sum_{l}\sum_{c=1}^{C_l} w_{l,c}\,
        \frac{\lVert FM_{l,c}(x_i) - FM^0_{l,c}(x_i)\rVert_2^2}{S_l}

FM_{l,c}(x_i): channel c of the finetuned backbone's map at layer l for sample i, FM⁰ the same
for the pretrained backbone (a frozen teacher pass, ``reference = "teacher"``; with peft methods
the base model with adapters disabled), S_l the number of spatial positions (h·w, or tokens).
Per layer the weights sum to one, so with uniform attention each layer contributes its mean
squared difference. (The authors' reference implementation in the Transfer-Learning-Library,
``AttentionBehavioralRegularization``, sums over the batch and scales by C_l/2 instead: its
penalty is n·C_l/2 times this one per layer.) The paper's second term, L2 on the new head, is
left to the optimizer's weight decay.

Layers: :func:`riftune.models.feature_maps.default_layers` (the last block of each timm stage
for CNNs; blocks at 1/4, 1/2, 3/4 and the end of a ViT) unless ``--delta-layers`` names them.

Attention (computed once in :meth:`Delta.prepare`, as in the paper): per channel, how much a
linear probe's cross-entropy rises when that channel of the pretrained map is zeroed, z-scored
and softmaxed per layer; :mod:`riftune.regularizers.delta_attention` estimates it, from the
first ``--delta-attention-images`` training images (about one training epoch's cost at the
default recipe).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from riftune.distributed import world_size
from riftune.models.feature_maps import default_layers
from riftune.options import Section, option, positive
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    first_images,
    fit_linear_probe,
)
from riftune.regularizers.l2sp import BufferDict

DEFAULT_ATTENTION_IMAGES = 32


@register
class Delta(Regularizer):
    """``--reg delta``: attention-weighted feature-map distance; formula in the module docstring.

    Attributes:
        feature_layers: the tapped module names (set by :meth:`prepare` when not given); the
            engine must tap these, in this order.

    Args:
        layers: module names to regularize; ``None`` picks :func:`default_layers`.
        attention_images: how many training images estimate the channel attention (in
            total; each of W ranks uses ⌈attention_images / W⌉).
    """

    name = "delta"
    splits_over_micro_batches = True
    reference = "teacher"
    needs_feature_maps = True
    penalizes_features_only = True

    def __init__(
        self, layers: Sequence[str] | None = None, attention_images: int = DEFAULT_ATTENTION_IMAGES
    ):
        super().__init__()
        if attention_images < 1:
            raise ValueError(f"--delta-attention-images must be >= 1; got {attention_images}")
        self.feature_layers: list[str] = list(layers or [])
        self.attention_images = attention_images
        self.attention = BufferDict()
        self.distance = AttentionMapDistance()

    @dataclass
    class Options(Section):
        """``--delta-*``."""

        flag_prefix: ClassVar[str] = "delta"
        layers: str | None = option(
            None,
            "delta: comma-separated backbone module names whose outputs are regularized "
            "(default: last block of each timm stage; ViT blocks at 1/4, 1/2, 3/4, end)",
        )
        attention_images: int = option(
            DEFAULT_ATTENTION_IMAGES,
            "delta: training images used once to estimate the channel attention; costs one "
            "ablation per image and channel, each through the layers after the ablated one",
            check=positive,
        )

    @classmethod
    def from_options(cls, options: Options, dim: int) -> Delta:
        layers = [n.strip() for n in options.layers.split(",")] if options.layers else None
        return cls(layers=layers, attention_images=options.attention_images)

    def prepare(self, pretrained: PretrainedView) -> None:
        """Choose the layers (if not given) and compute the channel attention once.

        Needs ``pretrained.train_labels`` (N,) and ``pretrained.train_batches`` (a callable
        returning an iterable of ``(images, labels, ...)`` training batches without
        augmentation).
        """
        labels = getattr(pretrained, "train_labels", None)
        batches = getattr(pretrained, "train_batches", None)
        if labels is None or batches is None:
            raise ValueError(
                "--reg delta needs PretrainedView.train_labels and .train_batches to compute "
                "its channel attention"
            )
        backbone = pretrained.model.backbone
        if not self.feature_layers:
            self.feature_layers = default_layers(backbone)
        device = next(backbone.parameters()).device
        probe = fit_linear_probe(pretrained.train_embeddings, labels).to(device)
        images = first_images(batches(), math.ceil(self.attention_images / world_size()))
        scores = ablation_scores(backbone, self.feature_layers, probe, images)
        for index, layer_scores in enumerate(scores):
            self.attention[str(index)] = attention_from_scores(layer_scores)

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Ω for one step (float32, :class:`AttentionMapDistance`), from ``step.feature_maps``
        and the teacher's maps.

        Shape:
            step.feature_maps[l], step.reference_feature_maps[l]: (n, C_l, *spatial_l).

        Raises:
            ValueError: maps missing, or not matching the prepared layers and channels.
        """
        maps, reference = step.feature_maps, step.reference_feature_maps
        if maps is None or reference is None:
            raise ValueError(
                "--reg delta needs the finetuned and pretrained feature maps in StepInputs"
            )
        if not (len(maps) == len(reference) == len(self.attention) == len(self.feature_layers)):
            raise ValueError(
                f"--reg delta was prepared for {len(self.attention)} layers "
                f"({', '.join(self.feature_layers)}); got {len(maps)} finetuned and "
                f"{len(reference)} pretrained maps"
            )
        weights = [self.attention[str(index)] for index in range(len(maps))]
        return self.distance(maps, reference, weights, self.feature_layers)

    def get_extra_state(self) -> dict:
        return {"feature_layers": list(self.feature_layers)}

    def set_extra_state(self, state: dict) -> None:
        self.feature_layers = list(state["feature_layers"])


class AttentionMapDistance(nn.Module):
    r"""DELTA's attention-weighted feature-map distance, engine-free.

    Li et al., "DELTA", ICLR 2019 (https://openreview.net/forum?id=rkgbwsAcYm):

    .. math::
        Ω = \frac{1}{n}\sum_{i=1}^{n}\sum_{l}\sum_{c=1}^{C_l} w_{l,c}\,
            \frac{‖FM_{l,c}(x_i) − FM^0_{l,c}(x_i)‖²_2}{S_l}

    for the maps FM_l of the finetuned model, FM⁰_l of the pretrained one (constants), the
    channel weights w_l and S_l spatial positions per map; float32 with autocast off.

    Shape:
        - maps[l], reference[l]: (n, C_l, *spatial_l), channels second.
        - weights[l]: (C_l,).
        - output: scalar, float32.

    Raises:
        ValueError: a layer's maps or weights that do not match (named by ``names`` when given).
    """

    def forward(
        self,
        maps: Sequence[torch.Tensor],
        reference: Sequence[torch.Tensor],
        weights: Sequence[torch.Tensor],
        names: Sequence[str] | None = None,
    ) -> torch.Tensor:
        with torch.autocast(device_type=maps[0].device.type, enabled=False):
            total = maps[0].new_zeros((), dtype=torch.float32)
            for index, (fm, fm0, w) in enumerate(zip(maps, reference, weights, strict=True)):
                if fm.shape != fm0.shape or fm.shape[1] != w.shape[0]:
                    layer = names[index] if names else index
                    raise ValueError(
                        f"--reg delta layer {layer}: maps {tuple(fm.shape)} "
                        f"and {tuple(fm0.shape)} for {w.shape[0]} attention weights"
                    )
                per_channel = (fm.float() - fm0.detach().float()).flatten(2).square().mean(2)
                total = total + (per_channel * w.float()).sum(1).mean()
        return total
