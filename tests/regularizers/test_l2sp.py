"""L2-SP (riftune/regularizers/l2sp.py): its core and penalty against NumPy, what it penalizes,
under LoRA too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from riftune.models.feature_maps import resolve_layer
from riftune.regularizers.base import StepInputs
from riftune.regularizers.l2sp import L2SP, StartingPointDistance, squared_distance
from riftune.tuning import LoRA
from riftune.tuning.base import BackboneWeight

from .conftest import state_round_trip, tiny_classifier, view


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


def test_starting_point_distance_against_numpy():
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(3, 2)), rng.normal(size=5)]
    anchors = [w + rng.normal(size=w.shape) for w in weights]
    new = [rng.normal(size=(2, 2))]
    expected = sum(np.sum((w - a) ** 2) for w, a in zip(weights, anchors, strict=True))
    expected += 0.3 * np.sum(new[0] ** 2)
    tensors = [torch.tensor(x, requires_grad=True) for x in weights + new]
    distance = StartingPointDistance(0.3)
    value = distance(tensors[:2], [torch.tensor(a) for a in anchors], tensors[2:])
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    np.testing.assert_allclose(tensors[0].grad.numpy(), 2 * (weights[0] - anchors[0]), rtol=1e-5)
    np.testing.assert_allclose(tensors[2].grad.numpy(), 0.6 * new[0], rtol=1e-5)
    assert distance([], [], []).item() == 0
    with pytest.raises(ValueError, match="2 weights for 1 starting points"):
        distance(tensors[:2], [torch.tensor(anchors[0])], [])
    with pytest.raises(ValueError, match="beta-ratio must be >= 0"):
        L2SP(beta_ratio=-1)
