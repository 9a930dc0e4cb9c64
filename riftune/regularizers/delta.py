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

Attention (computed once in :meth:`Delta.prepare`, as in the paper): fit a linear probe on the
pretrained embeddings of the training split, then for each channel measure how much the probe's
cross-entropy on training images rises when that channel of the pretrained backbone's map is
set to zero (eval mode, averaged over the first ``--delta-attention-images`` training images,
split over the ranks). Per layer these increases are z-scored and turned into weights by
softmax(score / 5), the normalization and temperature of the authors' reference code. The cost
is images × Σ_l C_l ablations (32 × 512 for EfficientNet-Lite0's default layers), each of which
runs only the layers after the ablated one (see :func:`ablation_scores`), paid once before
training. 32 images by default (128 before 2026-12-04; the reference code takes 10 batches of
32): at the default recipe that costs about one training epoch; its weights sit a median 4-10%
per channel from the whole training set's (128 images: 2-6%), and DELTA runs with either gave
the same test AUC and CKA within their seed spread (BENCHMARKS.md, "DELTA's channel attention
at the defaults").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from riftune.metrics._distributed import all_reduce_sum
from riftune.models.feature_maps import (
    FeatureMapTap,
    channel_axis,
    default_layers,
    is_nhwc,
    resolve_layer,
)
from riftune.models.modes import eval_mode
from riftune.models.speed import channels_last_input, channels_last_meanwhile
from riftune.options import Section, option, positive
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register
from riftune.regularizers.l2sp import BufferDict

TEMPERATURE = 5.0
DEFAULT_ATTENTION_IMAGES = 32


def fit_linear_probe(
    embeddings: torch.Tensor, labels: torch.Tensor, weight_decay: float = 1e-4, steps: int = 100
) -> nn.Linear:
    r"""Multinomial logistic regression on fixed embeddings, by full-batch L-BFGS in float64.

    Minimizes mean cross-entropy + (weight_decay / 2)·‖W‖²_F (bias not decayed).

    Args:
        embeddings: Shape: (N, d).
        labels: class indices 0..k−1. Shape: (N,).

    Returns:
        ``nn.Linear(d, k)`` in float32 on the embeddings' device, without gradients.
    """
    x = embeddings.detach().double()
    y = labels.detach().to(x.device).long().reshape(-1)
    probe = nn.Linear(x.shape[1], int(y.max()) + 1, dtype=torch.float64, device=x.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay / 2 * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.float().requires_grad_(False)


def _masked_replicas(
    module: nn.Module,
    inputs: tuple,
    output: torch.Tensor,
    kept: torch.Tensor,
    mask: torch.Tensor,
    nhwc: bool,
) -> torch.Tensor:
    """Forward hook: replace the layer's output by m masked replicas of ``kept``, (m·n, ...).

    ``kept`` is this layer's map for the n images from the plain pass, channels first
    (:class:`~riftune.models.feature_maps.FeatureMapTap`); replica r is it with its channels
    multiplied by mask row r, returned in the layer's own layout. What the layers before ran
    on (a stand-in of a few rows, see :func:`ablation_scores`) is dropped, so only the layers
    after this one do work.
    """
    shape = [mask.shape[0], 1, mask.shape[1]] + [1] * (kept.ndim - 2)
    replicas = (kept.unsqueeze(0) * mask.view(shape).to(kept.dtype)).flatten(0, 1)
    return replicas.movedim(1, channel_axis(output, nhwc))


def _stand_in_rows(images: torch.Tensor, replica_rows: int) -> torch.Tensor:
    """What the layers before an ablated one run on: copies of the first image.

    Two rows, or three when the replicas have two: a row count that cannot broadcast against
    the replicas, so a later layer that also reads an earlier output fails on the mismatch
    instead of silently mixing rows. One replica row broadcasts against any count, so then
    the one image itself runs (and such a layer gets that image's own earlier output).
    """
    if replica_rows == 1:
        return images
    rows = 3 if replica_rows == 2 else 2
    return channels_last_input(images[:1].expand(rows, *images.shape[1:]).contiguous())


class _ActivationSizes:
    """Forward hooks on every submodule: per-image output sizes, in the order they appear."""

    def __init__(self, backbone: nn.Module):
        self.sizes: list[tuple[int, int]] = []  # (id(module), elements per image)
        self._handles = [m.register_forward_hook(self._record) for m in backbone.modules()]

    def _record(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim > 0 and output.shape[0] > 0:
            self.sizes.append((id(module), output[0].numel()))

    def peak_after(self, module: nn.Module) -> int:
        """The largest per-image output from ``module``'s own output onwards (1 if none)."""
        start = next(i for i, (key, _) in enumerate(self.sizes) if key == id(module))
        return max([size for _, size in self.sizes[start:]] + [1])

    def peak(self) -> int:
        return max([size for _, size in self.sizes] + [1])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def ablation_scores(
    backbone: nn.Module,
    layers: Sequence[str],
    head: nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    max_images: int = 256,
) -> list[torch.Tensor]:
    """Per channel, the mean rise of the head's cross-entropy when that channel is zeroed.

    score_{l,c} = (1/N) Σ_i [CE(head(f_{−(l,c)}(x_i)), y_i) − CE(head(f(x_i)), y_i)], with f the
    backbone in eval mode and f_{−(l,c)} the same with channel c of layer l's output set to 0.

    One plain pass of the n images keeps every tapped layer's output. Then many channels of
    a layer are ablated in one forward pass: a hook replaces l's output by m masked replicas
    of the kept one (one channel zeroed in each), so the layers after l run on m·n rows while
    the layers before l run only on a two-row stand-in (:func:`_stand_in_rows`), not on the
    n images again. m is as large as the memory of a plain forward pass of ``max_images``
    images allows: m·n·(largest activation per image from l onwards) <= max_images·(largest
    activation per image of the whole backbone), so late layers, whose remaining layers are
    small, take all or most of their channels in a pass. This needs each tapped layer to be a
    cut point of the backbone (everything after it depends on the images only through its
    output), as the stage and block outputs of timm CNNs and ViTs are. Images and the
    backbone's convolutions go in channels last (:func:`riftune.models.speed.channels_last_meanwhile`;
    the sums are reordered: equal to float32 rounding, and several times faster on a CPU where
    the model trains in NCHW). Under ``torch.distributed`` the sums and N are added over
    ranks, so every rank gets the same scores.

    Args:
        backbone: images -> embeddings. Its parameters' device is used.
        layers: module names (resolved by suffix).
        head: embeddings -> logits.
        batches: ``(images, labels, ...)`` tuples, as the data loaders yield.
        max_images: the memory of one ablation pass, in images through the whole backbone.

    Returns:
        One tensor per layer. Shape: (C_l,), float64.

    Raises:
        ValueError: ``batches`` is empty, or a layer is not a cut point (the ablated pass
            fails on mismatched batch sizes).
    """
    device = next(backbone.parameters()).device
    nhwc = is_nhwc(backbone)
    modules = [resolve_layer(backbone, name) for name in layers]
    sums: list[torch.Tensor] | None = None
    count = 0
    with torch.no_grad(), eval_mode(backbone), eval_mode(head), channels_last_meanwhile(backbone):
        for batch in batches:
            images = channels_last_input(batch[0].to(device))  # faster, same values
            labels = batch[1].to(device)
            n = images.shape[0]
            sizes = _ActivationSizes(backbone)
            try:
                with FeatureMapTap(backbone, layers) as tap:
                    embeddings = backbone(images)
                    maps = tap.pop()
            finally:
                sizes.close()
            base = F.cross_entropy(head(embeddings).float(), labels, reduction="sum")
            if sums is None:
                sums = [torch.zeros(fm.shape[1], dtype=torch.float64, device=device) for fm in maps]
            budget = max_images * sizes.peak()
            for name, module, kept, total in zip(layers, modules, maps, sums, strict=True):
                c = kept.shape[1]
                per_pass = min(c, max(1, budget // (n * sizes.peak_after(module))))
                for first in range(0, c, per_pass):
                    picked = torch.arange(first, min(first + per_pass, c), device=device)
                    mask = torch.ones(len(picked), c, device=device)
                    mask[torch.arange(len(picked), device=device), picked] = 0.0
                    hook = functools.partial(_masked_replicas, kept=kept, mask=mask, nhwc=nhwc)
                    handle = module.register_forward_hook(hook)
                    try:
                        ablated = backbone(_stand_in_rows(images, len(picked) * n))
                    except RuntimeError as error:
                        raise ValueError(
                            f"DELTA's channel attention: layer {name!r} seems not to be a cut "
                            "point of the backbone (a later layer also reads an earlier "
                            f"output); tap stage or block outputs ({error})"
                        ) from error
                    finally:
                        handle.remove()
                    losses = F.cross_entropy(
                        head(ablated).float(), labels.repeat(len(picked)), reduction="none"
                    )
                    total[picked] += losses.view(len(picked), n).double().sum(1) - base
            count += n
    if sums is None:
        raise ValueError("DELTA's channel attention needs at least one training batch; got none")
    *sums, total_count = all_reduce_sum([*sums, torch.tensor(float(count), device=device)])
    return [s / total_count for s in sums]


def first_images(
    batches: Iterable[Sequence[torch.Tensor]], limit: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` of the first ``limit`` images of ``batches`` (the last one cut)."""
    left = limit
    for batch in batches:
        if left <= 0:
            return
        images, labels = batch[0][:left], batch[1][:left]
        left -= images.shape[0]
        yield images, labels


def attention_from_scores(scores: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """softmax(z-score(scores) / temperature); uniform when all scores are equal.

    Shape:
        scores: (C,). Returns (C,), float32, summing to 1.
    """
    scores = scores.double()
    spread = scores.std(unbiased=False)
    standardized = (scores - scores.mean()) / spread if spread > 0 else torch.zeros_like(scores)
    return torch.softmax(standardized / temperature, 0).float()


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
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        images = first_images(batches(), math.ceil(self.attention_images / world))
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
