"""DELTA's channel attention (riftune/regularizers/delta_attention.py): the softmax of z-scored
scores, the linear probe, ablation scores against zeroing channels by hand, and, batched, equal
to the implementation it replaced.

The reference below is ``ablation_scores`` as it was at commit 1a9f34c (every ablation ran the
whole backbone on repeated images); the current one runs only the layers after the ablated
one, channels last. Both run on the shipped EfficientNet-Lite0 weights and real BreastMNIST
images at 28 px.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from riftune.data import load_dataset
from riftune.metrics.embeddings import collect_embeddings
from riftune.models import build_classifier
from riftune.models.feature_maps import FeatureMapTap, channel_axis, default_layers, resolve_layer
from riftune.models.modes import eval_mode
from riftune.models.speed import to_channels_last
from riftune.regularizers.delta import DEFAULT_ATTENTION_IMAGES, Delta
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    fit_linear_probe,
)

from .conftest import _batches, tiny_cnn


def _zero_channels_before(module, inputs, output, mask, nhwc):
    axis = channel_axis(output, nhwc)
    shape = [mask.shape[0], 1] + [1] * (output.ndim - 1)
    shape[axis if axis < 0 else axis + 1] = mask.shape[1]
    replicas = output.unflatten(0, (mask.shape[0], -1))
    return (replicas * mask.view(shape).to(output.dtype)).flatten(0, 1)


def ablation_scores_before(
    backbone: nn.Module,
    layers: Sequence[str],
    head: nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    max_images: int = 256,
) -> list[torch.Tensor]:
    """``riftune.regularizers.delta.ablation_scores`` at 1a9f34c (single process)."""
    modules = [resolve_layer(backbone, name) for name in layers]
    sums, count = None, 0
    with torch.no_grad(), eval_mode(backbone), eval_mode(head):
        for batch in batches:
            images, labels = batch[0], batch[1]
            n = images.shape[0]
            with FeatureMapTap(backbone, layers) as tap:
                base = F.cross_entropy(head(backbone(images)).float(), labels, reduction="sum")
                channels = [fm.shape[1] for fm in tap.pop()]
            if sums is None:
                sums = [torch.zeros(c, dtype=torch.float64) for c in channels]
            per_pass = max(1, max_images // n)
            for module, c, total in zip(modules, channels, sums, strict=True):
                for first in range(0, c, per_pass):
                    picked = torch.arange(first, min(first + per_pass, c))
                    mask = torch.ones(len(picked), c)
                    mask[torch.arange(len(picked)), picked] = 0.0
                    hook = functools.partial(_zero_channels_before, mask=mask, nhwc=False)
                    handle = module.register_forward_hook(hook)
                    try:
                        logits = head(backbone(images.repeat(len(picked), 1, 1, 1)))
                    finally:
                        handle.remove()
                    losses = F.cross_entropy(
                        logits.float(), labels.repeat(len(picked)), reduction="none"
                    )
                    total[picked] += losses.view(len(picked), n).double().sum(1) - base
            count += n
    return [s / count for s in sums]


@pytest.fixture(scope="module")
def lite0_breast():
    """Shipped EfficientNet-Lite0, a probe on 40 real training images, two batches (2 + 1),
    and the reference scores on them."""
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=28, mean=cfg["mean"], std=cfg["std"])
    train = Subset(data.train, range(40))
    probe_data = collect_embeddings(model.embed, DataLoader(train, batch_size=40), "cpu")
    probe = fit_linear_probe(probe_data.embeddings, probe_data.labels)
    batches = [b[:2] for b in DataLoader(Subset(data.train, range(3)), batch_size=2)]
    layers = default_layers(model.backbone)
    expected = ablation_scores_before(model.backbone, layers, probe, batches)
    return model, probe, batches, expected


@pytest.mark.parametrize("max_images", [256, 8])
def test_ablation_scores_equal_the_previous_implementation(lite0_breast, max_images):
    model, probe, batches, expected = lite0_breast
    layers = default_layers(model.backbone)
    got = ablation_scores(model.backbone, layers, probe, batches, max_images=max_images)
    assert model.backbone.conv_stem.weight.is_contiguous()  # ran channels last, then back
    assert [g.shape[0] for g in got] == [16, 24, 40, 112, 320]
    for g, e in zip(got, expected, strict=True):
        assert e.abs().max() > 1e-4  # the ablations do change the loss
        torch.testing.assert_close(g, e, rtol=1e-4, atol=2e-6)


def test_layers_before_the_ablated_one_run_on_the_batch_once(lite0_breast):
    """The stem sees the n images in the plain pass and a two-row stand-in in each ablation
    pass; the last stage takes its 320 channels in few passes."""
    model, probe, batches, _ = lite0_breast
    three = [tuple(torch.cat(parts) for parts in zip(*batches, strict=True))]
    rows: list[int] = []
    handle = model.backbone.conv_stem.register_forward_hook(
        lambda module, inputs, output: rows.append(output.shape[0])
    )
    try:
        ablation_scores(model.backbone, ["blocks.6"], probe, three, max_images=256)
    finally:
        handle.remove()
    # One plain pass, then passes of m ablations each: m·3·peak_after <= 256·peak.
    assert rows[0] == 3
    assert set(rows[1:]) == {2}
    assert 1 <= len(rows[1:]) <= 3  # the old code: ⌈320 / ⌊256 / 3⌋⌉ = 4 passes, 255 rows each


class _SkipOverLayer(nn.Module):
    """out = pool(b(a(x)) + x): ``a``'s output is not a cut point (x bypasses it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.b(self.a(x)) + x).mean((2, 3))


@pytest.mark.parametrize("images", [2, 4])
def test_a_layer_that_is_not_a_cut_point_is_refused(images):
    """Also with two images ablated one channel at a time (2 replica rows), where a stand-in
    of two rows would add up row for row without an error."""
    batch = (torch.randn(images, 3, 5, 5), torch.randint(0, 2, (images,)))
    with pytest.raises(ValueError, match="not to be a cut point"):
        ablation_scores(_SkipOverLayer(), ["a"], nn.Linear(3, 2), [batch], max_images=1)


def test_the_default_32_images_give_the_attention_of_128_within_its_sampling_noise():
    """The default (32 images, for a cost of about one training epoch) against the previous
    default (128) on real data: per layer the weights differ by a total variation of at most
    0.1 and by a median of at most 10% per channel (BENCHMARKS.md: 32 images' weights sit a
    median 4-10% from the whole training set's, 128 images' 2-6%)."""
    assert Delta().attention_images == DEFAULT_ATTENTION_IMAGES == 32
    torch.manual_seed(0)
    model = to_channels_last(build_classifier("efficientnet_lite0", num_classes=2))  # as runs
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=28, mean=cfg["mean"], std=cfg["std"])
    first = Subset(data.train, range(128))
    embedded = collect_embeddings(model.embed, DataLoader(first, batch_size=64), "cpu")
    probe = fit_linear_probe(embedded.embeddings, embedded.labels)
    layers = default_layers(model.backbone)
    batches = [b[:2] for b in DataLoader(first, batch_size=32)]
    few = ablation_scores(model.backbone, layers, probe, batches[:1])
    rest = ablation_scores(model.backbone, layers, probe, batches[1:])
    many = [(32 * a + 96 * b) / 128 for a, b in zip(few, rest, strict=True)]
    for name, a, b in zip(layers, few, many, strict=True):
        wa, wb = attention_from_scores(a), attention_from_scores(b)
        assert not torch.equal(wa, wb)
        assert 0.5 * (wa - wb).abs().sum() <= 0.1, name
        assert (wa / wb - 1).abs().median() <= 0.1, name


def test_attention_from_scores_is_zscored_softmax_with_temperature_5():
    scores = np.array([0.3, -0.1, 2.0, 0.0, 0.05])
    z = (scores - scores.mean()) / scores.std()
    expected = np.exp(z / 5) / np.exp(z / 5).sum()
    got = attention_from_scores(torch.tensor(scores))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(attention_from_scores(torch.ones(4)).numpy(), np.full(4, 0.25))


def test_linear_probe_reaches_the_optimum():
    gen = np.random.default_rng(3)
    x = gen.normal(size=(60, 4))
    y = (x[:, 0] + 0.5 * gen.normal(size=60) > 0).astype(np.int64) + (x[:, 1] > 1)
    probe = fit_linear_probe(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y), weight_decay=0.01
    )
    w, b = probe.weight.double().numpy(), probe.bias.double().numpy()
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(60), y] -= 1  # softmax − one-hot
    grad_w = p.T @ x / 60 + 0.01 * w
    grad_b = p.mean(0)
    assert np.abs(grad_w).max() < 1e-3 and np.abs(grad_b).max() < 1e-3


def _brute_force_scores(backbone, head, layers, batches):
    """Zero conv weight and bias of channel j (as the authors' code does) and re-run."""
    backbone.eval()
    ce = nn.CrossEntropyLoss(reduction="sum")
    scores = []
    with torch.no_grad():
        for name in layers:
            conv = resolve_layer(backbone, name)
            out = []
            for j in range(conv.out_channels):
                total, count = 0.0, 0
                for images, labels, _ in batches:
                    base = ce(head(backbone(images)), labels).item()
                    w, b = conv.weight[j].clone(), conv.bias[j].clone()
                    conv.weight[j] = 0.0
                    conv.bias[j] = 0.0
                    total += ce(head(backbone(images)), labels).item() - base
                    conv.weight[j], conv.bias[j] = w, b
                    count += len(labels)
                out.append(total / count)
            scores.append(np.array(out))
    return scores


def test_ablation_scores_match_zeroing_the_conv_channels():
    backbone, head = tiny_cnn(), nn.Linear(5, 3)
    backbone.train()
    backbone[1].train()
    batches = _batches([6, 4])
    got = ablation_scores(backbone, ["0", "3"], head, batches, max_images=12)  # several passes
    assert backbone.training and backbone[1].training  # modes restored
    expected = _brute_force_scores(copy.deepcopy(backbone), head, ["0", "3"], batches)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        ablation_scores(backbone, ["0"], head, [])
