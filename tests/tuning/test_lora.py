"""LoRA (riftune/tuning/lora.py): the layers it adapts and the merged weights it hands L2-SP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from riftune import tuning

from .conftest import (
    _fresh,
    _train,
)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_lora_targets_linear_and_ungrouped_convolutions_only(pristine, arch):
    model = _fresh(pristine, arch)
    plain = dict(model.backbone.named_modules())
    tuning.LoRA().apply(model)
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in model.backbone.named_modules()
        if hasattr(m, "lora_A")
    }
    expected = {
        name
        for name, m in plain.items()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    }
    assert adapted == expected and adapted
    if arch == "cnn":
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in plain.values())


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_lora_backbone_weights_are_the_merged_weights_under_the_plain_names(pristine, arch):
    """What L2-SP is handed: W₀ + ΔW equals peft's own merge, name for name."""
    model = _fresh(pristine, arch)
    method = tuning.LoRA()
    method.apply(model)
    _train(model, method, steps=1, lr=1e-2)  # B moves off zero: the update B A is non-zero
    weights = method.backbone_weights(model)
    plain_names = [name for name, _ in pristine[arch].backbone.named_parameters()]
    assert [w.name for w in weights] == plain_names  # no LoRA factor, plain order
    merged = method.merged_backbone_state(model)
    adapted = [w for w in weights if w.delta is not None]
    assert {w.name for w in adapted} == {
        t + ".weight" for t in tuning.lora.lora_targets(pristine[arch].backbone)
    }
    for weight in weights:
        torch.testing.assert_close(weight.value().detach(), merged[weight.name], rtol=0, atol=1e-6)
    weight = adapted[0]
    weight.value().square().sum().backward()  # differentiable in the factors, not in W₀
    layer = dict(model.backbone.named_modules())[
        "base_model.model." + weight.name.removesuffix(".weight")
    ]
    assert layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert weight.parameter.grad is None
    with model.backbone.disable_adapter():  # no update while the adapters are off
        assert weight.delta() is None and weight.value() is weight.parameter
