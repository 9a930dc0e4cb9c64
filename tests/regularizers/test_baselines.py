"""Baseline regularizers (cka, feature-distill, l2sp, delta).

Every penalty is checked against an independent NumPy computation; the distributed parts in a
real 2-process gloo group (the feature-map tap itself: tests/models/test_feature_maps.py).
"""

from __future__ import annotations

import copy
import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.models.feature_maps import FeatureMapTap, resolve_layer
from riftune.regularizers.base import PretrainedView, StepInputs
from riftune.regularizers.cka import CKAPenalty
from riftune.regularizers.delta import Delta
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    fit_linear_probe,
)
from riftune.regularizers.feature_distill import FeatureDistill
from riftune.regularizers.l2sp import L2SP, squared_distance
from riftune.runs import checkpoint_file as ckpt
from riftune.tuning import LoRA
from riftune.tuning.base import BackboneWeight


# ------------------------------------------------------------------------------ helpers
def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def view(model: nn.Module, embeddings: torch.Tensor, **extra) -> PretrainedView:
    """A PretrainedView; fields the dataclass does not (yet) declare are set as attributes."""
    declared = {f.name for f in dataclasses.fields(PretrainedView)}
    result = PretrainedView(
        model=model,
        train_embeddings=embeddings,
        **{k: v for k, v in extra.items() if k in declared},
    )
    for key, value in extra.items():
        if key not in declared:
            setattr(result, key, value)
    return result


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def tiny_classifier(backbone: nn.Module | None = None, dim: int = 5, k: int = 3) -> Classifier:
    return Classifier(backbone or tiny_cnn(), dim, k, {})


def state_round_trip(module: nn.Module, fresh: nn.Module, directory: Path) -> nn.Module:
    """Load ``module``'s state into ``fresh`` through a real riftune checkpoint file."""
    tensors, meta = ckpt.flatten_state({"regularizer": module.state_dict()})
    path = ckpt.save_checkpoint(directory, "step-1", tensors, meta)
    fresh.load_state_dict(ckpt.unflatten_state(*ckpt.load_checkpoint(path))["regularizer"])
    return fresh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- cka / distill
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_cka_penalty_is_one_minus_numpy_cka(n, d, seed):
    gen = np.random.default_rng(seed)
    z, z0 = gen.normal(size=(n, d)), gen.normal(size=(n, d)) + gen.normal(size=(1, d))
    got = CKAPenalty().penalty(
        StepInputs(torch.tensor(z, dtype=torch.float32), torch.tensor(z0, dtype=torch.float32))
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(1 - np_linear_cka(z, z0), abs=1e-5)


def test_cka_penalty_gradient_and_invariances():
    z0 = torch.randn(16, 8)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    rotated = (3.0 * z0 @ q + 1.0).requires_grad_(True)  # same representation up to Q, scale
    reg = CKAPenalty()
    value = reg.penalty(StepInputs(rotated, z0))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(16, 8, requires_grad=True)
    reg.penalty(StepInputs(z, z0)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"StepInputs\.reference"):
        reg.penalty(StepInputs(z))
    with pytest.raises(ValueError, match="pairs each sample"):
        reg.penalty(StepInputs(z, z0[:-1]))


def test_feature_distill_exact_value_and_gradient():
    gen = np.random.default_rng(1)
    z, z0 = gen.normal(size=(7, 5)), gen.normal(size=(7, 5))
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    z0t = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    value = FeatureDistill("cache").penalty(StepInputs(zt, z0t))
    assert value.item() == pytest.approx(((z - z0) ** 2).sum(1).mean(), rel=1e-6)
    value.backward()
    np.testing.assert_allclose(zt.grad.numpy(), 2 * (z - z0) / 7, rtol=1e-5)
    assert z0t.grad is None  # the reference is a constant


def test_reference_flag_is_shared_and_parsed():
    from riftune.config import finetune_parser, run_config_from_args

    parser = finetune_parser()

    def build(*flags: str):
        config = run_config_from_args(parser.parse_args(list(flags)))
        return config.regularizer.build(8)

    # --reference is one flag that reaches whichever of cka and feature-distill is chosen
    assert build("--reg", "cka", "--reference", "cache").reference == "cache"
    assert build("--reg", "feature-distill", "--reference", "cache").reference == "cache"
    assert build("--reg", "cka").reference == "teacher"
    assert build("--reg", "l2sp", "--l2sp-beta-ratio", "0.5").distance.beta_ratio == 0.5
    assert build("--reg", "delta").feature_layers == []
    layered = build("--reg", "delta", "--delta-layers", "blocks.1, blocks.3")
    assert layered.feature_layers == ["blocks.1", "blocks.3"]
    with pytest.raises(UserError, match="--reference"):
        parser.parse_args(["--reference", "other"])


# ------------------------------------------------------------------------------ l2sp
def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_l2sp_exact_value_gradient_and_frozen_parameters(tmp_path):
    model = tiny_classifier()
    reg = L2SP(beta_ratio=0.3)
    reg.prepare(view(model, torch.zeros(1, 5)))
    theta0 = {n: p.detach().numpy().copy() for n, p in model.backbone.named_parameters()}
    _perturb(model)
    model.backbone[3].bias.requires_grad_(False)  # frozen: not penalized

    expected = sum(
        ((p.detach().numpy() - theta0[n]) ** 2).sum()
        for n, p in model.backbone.named_parameters()
        if n != "3.bias"
    ) + 0.3 * sum((p.detach().numpy() ** 2).sum() for p in model.head.parameters())
    value = reg.penalty(StepInputs(torch.zeros(1, 5), model=model))
    assert value.item() == pytest.approx(expected, rel=1e-5)

    value.backward()
    w = model.backbone[0].weight
    np.testing.assert_allclose(
        w.grad.numpy(), 2 * (w.detach().numpy() - theta0["0.weight"]), rtol=1e-5, atol=1e-7
    )
    h = model.head.weight
    np.testing.assert_allclose(h.grad.numpy(), 2 * 0.3 * h.detach().numpy(), rtol=1e-5)

    fresh = state_round_trip(reg, L2SP(beta_ratio=0.3), tmp_path)
    assert fresh.penalty(StepInputs(torch.zeros(1, 5), model=model)).item() == pytest.approx(
        value.item(), rel=1e-6
    )


def test_l2sp_parameters_added_after_prepare_are_new_layers():
    model = tiny_classifier()
    reg = L2SP(beta_ratio=0.5)
    reg.prepare(view(model, torch.zeros(1, 5)))
    prompt = nn.Parameter(torch.randn(2, 3))
    model.backbone.register_parameter("prompt", prompt)
    head = sum((p.detach() ** 2).sum() for p in model.head.parameters())
    value = reg.penalty(StepInputs(torch.zeros(1, 5), model=model))
    assert value.item() == pytest.approx(
        0.5 * (head + (prompt.detach() ** 2).sum()).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="prepare"):
        L2SP().penalty(StepInputs(torch.zeros(1, 5), model=model))
    with pytest.raises(ValueError, match=r"StepInputs\.model"):
        reg.penalty(StepInputs(torch.zeros(1, 5)))


@pytest.mark.parametrize("anchored", [True, False])
def test_squared_distance_matches_the_per_tensor_sum(anchored):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 4), ()]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float32]  # mixed: unfused path
    params = [
        torch.randn(s, generator=gen, dtype=t).requires_grad_()
        for s, t in zip(shapes, dtypes, strict=True)
    ]
    anchors = [torch.randn(s, generator=gen, dtype=t) for s, t in zip(shapes, dtypes, strict=True)]
    fused = squared_distance(params, anchors if anchored else None)
    fused_grads = torch.autograd.grad(3 * fused, params)
    offsets = anchors if anchored else [torch.zeros_like(p) for p in params]
    plain = sum(
        (p.float() - a.float()).square().sum() for p, a in zip(params, offsets, strict=True)
    )
    plain_grads = torch.autograd.grad(3 * plain, params)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for got, want, param in zip(fused_grads, plain_grads, params, strict=True):
        assert got.dtype == param.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_l2sp_follows_what_trains_and_a_replaced_head():
    model = tiny_classifier()
    reg = L2SP(beta_ratio=0.5)
    reg.prepare(view(model, torch.zeros(1, 5)))
    _perturb(model)
    step = StepInputs(torch.zeros(1, 5), model=model)

    def expected() -> float:
        backbone = sum(
            (p.detach() - reg.anchor[n]).square().sum()
            for n, p in model.backbone.named_parameters()
            if p.requires_grad
        )
        head = sum(p.detach().square().sum() for p in model.head.parameters() if p.requires_grad)
        return float(backbone + 0.5 * head)

    assert reg.penalty(step).item() == pytest.approx(expected(), rel=1e-5)
    model.backbone.requires_grad_(False)  # linear probing, then (LP-FT) unfrozen again
    assert reg.penalty(step).item() == pytest.approx(expected(), rel=1e-5)
    model.backbone.requires_grad_(True)
    assert reg.penalty(step).item() == pytest.approx(expected(), rel=1e-5)
    model.head = nn.Linear(model.head.in_features, 3)  # a new head, new parameter objects
    value = reg.penalty(step)
    assert value.item() == pytest.approx(expected(), rel=1e-5)
    value.backward()
    assert model.head.weight.grad is not None


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))


def test_l2sp_under_lora_penalizes_the_merged_weight():
    import peft  # imported here: it is slow, and the spawned workers never need it

    plain = tiny_classifier(_mlp())
    before_wrap = L2SP(beta_ratio=0.2)
    before_wrap.prepare(view(plain, torch.zeros(1, 5)))  # snapshot of the plain backbone
    config = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["0"])
    plain.backbone = peft.get_peft_model(plain.backbone, config)
    model = plain
    weights = LoRA().backbone_weights  # the method hands L2-SP the effective weights
    after_wrap = L2SP(beta_ratio=0.2)
    after_wrap.prepare(view(model, torch.zeros(1, 5), backbone_weights=weights))  # peft-wrapped
    layer = resolve_layer(model.backbone, "0")
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    a = layer.lora_A["default"].weight.detach().numpy()
    b = layer.lora_B["default"].weight.detach().numpy()
    delta = (6 / 2) * b @ a  # peft's scaling: lora_alpha / r
    head = sum((p.detach().numpy() ** 2).sum() for p in model.head.parameters())
    expected = (delta**2).sum() + 0.2 * head

    step = StepInputs(torch.zeros(1, 5), model=model, backbone_weights=weights)
    for reg in (before_wrap, after_wrap):
        assert reg.penalty(step).item() == pytest.approx(expected, rel=1e-5)
    after_wrap.penalty(step).backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None  # frozen by peft

    model.backbone.merge_adapter()  # the update now sits in the (frozen) base weight
    assert after_wrap.penalty(step).item() == pytest.approx(expected, rel=1e-5)
    model.backbone.unmerge_adapter()
    with model.backbone.disable_adapter():
        assert after_wrap.penalty(step).item() == pytest.approx(0.2 * head, rel=1e-5)


def test_l2sp_reads_adapted_weights_from_the_method_hook_alone():
    """Any method's updates reach L2-SP through backbone_weights: no peft involved."""
    model = tiny_classifier()
    reg = L2SP(beta_ratio=0.5)
    reg.prepare(view(model, torch.zeros(1, 5)))  # the plain snapshot θ⁰
    first = model.backbone[0].weight
    update = torch.randn(first.shape, requires_grad=True)  # a method's own update ΔW
    model.backbone.requires_grad_(False)  # the base weights stay frozen, as under LoRA

    def weights(m):
        return [
            BackboneWeight(name, p, (lambda: update) if name == "0.weight" else None)
            for name, p in m.backbone.named_parameters()
        ]

    value = reg.penalty(StepInputs(torch.zeros(1, 5), model=model, backbone_weights=weights))
    head = sum((p.detach() ** 2).sum() for p in model.head.parameters())
    assert value.item() == pytest.approx((update.detach() ** 2).sum().item() + 0.5 * head.item())
    value.backward()
    torch.testing.assert_close(update.grad, 2 * update.detach())
    plain = reg.penalty(StepInputs(torch.zeros(1, 5), model=model))  # default: no update
    assert plain.item() == pytest.approx(0.5 * head.item())


def test_l2sp_refuses_dora():
    import peft

    model = tiny_classifier(_mlp())
    model.backbone = peft.get_peft_model(
        model.backbone, peft.LoraConfig(r=2, target_modules=["0"], use_dora=True)
    )
    weights = LoRA().backbone_weights
    reg = L2SP()
    reg.prepare(view(model, torch.zeros(1, 5), backbone_weights=weights))
    with pytest.raises(ValueError, match="DoRA"):
        reg.penalty(StepInputs(torch.zeros(1, 5), model=model, backbone_weights=weights))


# ------------------------------------------------------------------------------ delta
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


def _batches(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 3, 8, 8, generator=gen),
            torch.randint(0, 3, (n,), generator=gen),
            torch.arange(n),
        )
        for n in sizes
    ]


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


# ------------------------------------------------------------------------ delta on a ViT
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


# ------------------------------------------------------------------------ distributed
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
