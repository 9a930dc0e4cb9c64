r"""DELTA's channel attention: which channels of the pretrained feature maps the task uses.

Computed once before training by :meth:`riftune.regularizers.delta.Delta.prepare`, as in the
paper (Li et al., ICLR 2019): fit a linear probe on the pretrained embeddings of the training
split (:func:`fit_linear_probe`), then for each channel measure how much the probe's
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
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from riftune.distributed import all_reduce_sum
from riftune.models.feature_maps import FeatureMapTap, channel_axis, is_nhwc, resolve_layer
from riftune.models.modes import eval_mode
from riftune.models.speed import channels_last_input, channels_last_meanwhile

TEMPERATURE = 5.0
"""The softmax temperature of the authors' reference code."""


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
