"""DELTA (riftune/regularizers/delta.py): its core and penalty against NumPy, on a CNN and a
ViT, and in a real 2-process gloo group (the feature-map tap itself:
tests/models/test_feature_maps.py).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from riftune.models.classifier import Classifier
from riftune.models.feature_maps import FeatureMapTap
from riftune.regularizers.base import StepInputs
from riftune.regularizers.cka import CKAPenalty
from riftune.regularizers.delta import AttentionMapDistance, Delta
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    fit_linear_probe,
)

from .conftest import _batches, np_linear_cka, state_round_trip, tiny_classifier, tiny_cnn, view


def test_delta_penalty_matches_numpy_on_hand_made_maps(tmp_path):
    gen = np.random.default_rng(2)
    maps = [gen.normal(size=(3, 4, 5, 6)), gen.normal(size=(3, 7, 9))]  # image map, tokens
    refs = [gen.normal(size=m.shape) for m in maps]
    weights = [gen.dirichlet(np.ones(4)), gen.dirichlet(np.ones(7))]
    reg = Delta(layers=["a", "b"])
    for i, w in enumerate(weights):
        reg.attention[str(i)] = torch.tensor(w, dtype=torch.float32)

    expected = 0.0
    for fm, fm0, w in zip(maps, refs, weights, strict=True):
        n, c = fm.shape[:2]
        diff = (fm - fm0).reshape(n, c, -1)
        expected += (w * (diff**2).sum(2) / diff.shape[2]).sum(1).mean()

    fmt = [torch.tensor(m, dtype=torch.float32, requires_grad=True) for m in maps]
    ref_t = [torch.tensor(m, dtype=torch.float32, requires_grad=True) for m in refs]
    value = reg.penalty(
        StepInputs(torch.zeros(3, 1), feature_maps=fmt, reference_feature_maps=ref_t)
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert all(t.grad.abs().sum() > 0 for t in fmt)
    assert all(t.grad is None for t in ref_t)

    fresh = state_round_trip(reg, Delta(), tmp_path)
    assert fresh.feature_layers == ["a", "b"]
    assert fresh.penalty(
        StepInputs(torch.zeros(3, 1), feature_maps=fmt, reference_feature_maps=ref_t)
    ).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="prepared for 2 layers"):
        reg.penalty(
            StepInputs(torch.zeros(3, 1), feature_maps=fmt[:1], reference_feature_maps=ref_t[:1])
        )
    with pytest.raises(ValueError, match="feature maps"):
        reg.penalty(StepInputs(torch.zeros(3, 1)))


def test_delta_prepare_computes_normalized_attention_and_round_trips(tmp_path):
    model = tiny_classifier()
    batches = _batches([5, 5, 5])
    with torch.no_grad():
        embeddings = torch.cat([model.backbone.eval()(b[0]) for b in batches])
    labels = torch.cat([b[1] for b in batches])
    reg = Delta(layers=["0", "3"], attention_images=7)
    with pytest.raises(ValueError, match="train_labels"):
        reg.prepare(view(model, embeddings))
    reg.prepare(view(model, embeddings, train_labels=labels, train_batches=lambda: iter(batches)))
    weights = [reg.attention["0"], reg.attention["1"]]
    assert [w.shape[0] for w in weights] == [4, 5]
    for w in weights:
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6) and (w > 0).all()
    # The same as ablating the first 7 images (one batch and 2 of the next) with the probe.
    probe = fit_linear_probe(embeddings, labels)
    first_seven = [batches[0][:2], (batches[1][0][:2], batches[1][1][:2])]
    scores = ablation_scores(model.backbone, ["0", "3"], probe, first_seven)
    for w, s in zip(weights, scores, strict=True):
        torch.testing.assert_close(w, attention_from_scores(s))
    fresh = state_round_trip(reg, Delta(), tmp_path)
    assert fresh.feature_layers == ["0", "3"]
    assert torch.equal(fresh.attention["1"], weights[1])


def test_delta_on_a_timm_vit_token_maps_and_default_layers():
    vit = timm.create_model(  # a narrow, shallow vit_tiny keeps the ablations cheap
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=16,
        depth=4,
        embed_dim=48,
        num_heads=3,
    )
    model = Classifier(vit, 48, 3, {})
    batch = (torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), torch.arange(3))
    head = nn.Linear(48, 3)

    # Token maps (n, tokens, d): channel j is feature j of every token.
    got = ablation_scores(vit, ["blocks.1"], head, [batch])[0]
    ce = nn.CrossEntropyLoss()
    with torch.no_grad():
        vit.eval()
        base = ce(head(vit(batch[0])), batch[1]).item()
        for j in range(6):
            zero_j = vit.blocks[1].register_forward_hook(
                lambda module, inputs, out, j=j: out.index_fill(-1, torch.tensor([j]), 0.0)
            )
            ablated = ce(head(vit(batch[0])), batch[1]).item()
            zero_j.remove()
            assert got[j].item() == pytest.approx(ablated - base, rel=1e-4, abs=1e-6)

    reg = Delta(attention_images=3)
    with torch.no_grad():
        embeddings = vit(batch[0])
    reg.prepare(view(model, embeddings, train_labels=batch[1], train_batches=lambda: iter([batch])))
    assert reg.feature_layers == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert [reg.attention[str(i)].shape[0] for i in range(4)] == [48] * 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cka_setup():
    torch.manual_seed(0)
    x, z0 = torch.randn(8, 6), torch.randn(8, 4)
    return x, z0, nn.Linear(6, 4)


def _tap_setup():
    torch.manual_seed(0)
    model = tiny_classifier().eval()  # BatchNorm on running statistics: no per-rank batch stats
    reg = Delta(layers=["3"])
    reg.attention["0"] = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    return model, reg, torch.randn(8, 3, 8, 8), torch.randn(8, 5, 8, 8)


def _tap_loss(model_call, model, reg, images, reference):
    tap = FeatureMapTap(model.backbone, ["3"])
    out = model_call(images)
    (fm,) = tap.pop()
    tap.close()
    step = StepInputs(out.embeddings, feature_maps=[fm], reference_feature_maps=[reference])
    return out.logits.square().mean() + reg.penalty(step)


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        half = slice(4 * rank, 4 * rank + 4)
        # CKA over the global batch: DDP-averaged gradients equal the one-process gradient.
        x, z0, linear = _cka_setup()
        ddp_linear = nn.parallel.DistributedDataParallel(linear)  # kept alive through backward
        value = CKAPenalty().penalty(StepInputs(ddp_linear(x[half]), z0[half]))
        value.backward()
        # A tap under DDP (hooks on the wrapped model's modules), DELTA through the reducer.
        model, reg, images, reference = _tap_setup()
        ddp = nn.parallel.DistributedDataParallel(model)
        _tap_loss(ddp, model, reg, images[half], reference[half]).backward()
        # Channel ablation scores: each rank one batch, summed over ranks.
        torch.manual_seed(1)
        backbone, head = tiny_cnn(), nn.Linear(5, 3)
        scores = ablation_scores(backbone, ["0"], head, _batches([4, 4], seed=2)[rank : rank + 1])
        torch.save(
            {
                "value": value.item(),
                "linear_grad": linear.weight.grad,
                "conv_grad": model.backbone[3].weight.grad,
                "scores": scores[0],
            },
            f"{out_dir}/{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch, timm and riftune: ~30 s here
def test_distributed_global_batch_ddp_tap_and_attention(tmp_path):
    mp.spawn(_distributed_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]

    x, z0, linear = _cka_setup()
    single = CKAPenalty().penalty(StepInputs(linear(x), z0))
    single.backward()
    with torch.no_grad():
        expected_value = 1 - np_linear_cka(linear(x).numpy(), z0.numpy())
    assert single.item() == pytest.approx(expected_value, abs=1e-6)

    model, reg, images, reference = _tap_setup()
    _tap_loss(model, model, reg, images, reference).backward()

    torch.manual_seed(1)
    backbone, head = tiny_cnn(), nn.Linear(5, 3)
    scores = ablation_scores(backbone, ["0"], head, _batches([4, 4], seed=2))[0]

    for result in results:
        assert result["value"] == pytest.approx(single.item(), abs=1e-6)
        torch.testing.assert_close(result["linear_grad"], linear.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            result["conv_grad"], model.backbone[3].weight.grad, rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(result["scores"], scores, rtol=1e-5, atol=1e-7)


def test_attention_map_distance_against_numpy():
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(3, 2, 4, 4)), rng.normal(size=(3, 5, 7))]  # a conv map, tokens
    reference = [rng.normal(size=m.shape) for m in maps]
    weights = [rng.random(2), rng.random(5)]
    expected = 0.0
    for fm, fm0, w in zip(maps, reference, weights, strict=True):
        per_channel = ((fm - fm0) ** 2).reshape(*fm.shape[:2], -1).mean(2)  # (n, C): ‖·‖²/S
        expected += (per_channel * w).sum(1).mean()
    value = AttentionMapDistance()(
        [torch.tensor(m) for m in maps],
        [torch.tensor(m) for m in reference],
        [torch.tensor(w) for w in weights],
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="layer stage2: maps"):
        AttentionMapDistance()(
            [torch.tensor(maps[0])], [torch.tensor(reference[0])], [torch.ones(3)], ["stage2"]
        )
