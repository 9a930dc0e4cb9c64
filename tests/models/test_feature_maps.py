"""The feature-map tap: the maps of named submodules, plain and under peft LoRA.

Checked against running the backbone's submodules by hand (timm models with random weights).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from riftune.models.classifier import Classifier
from riftune.models.feature_maps import FeatureMapTap, default_layers, resolve_layer

IMG = 32


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _efficientnet():
    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=IMG)


def _by_hand_efficientnet(model, x):
    out = {}
    h = model.bn1(model.conv_stem(x))
    for i, stage in enumerate(model.blocks):
        h = stage(h)
        out[f"blocks.{i}"] = h
    return out


def _by_hand_vit(model, x):
    out = {}
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for i, block in enumerate(model.blocks):
        h = block(h)
        out[f"blocks.{i}"] = h.transpose(1, 2)  # (n, tokens, d) -> (n, d, tokens)
    return out


def test_default_layers():
    assert default_layers(_efficientnet()) == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "blocks.6",
    ]
    assert default_layers(_vit()) == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    with pytest.raises(ValueError, match="--delta-layers"):
        default_layers(tiny_cnn())


@pytest.mark.parametrize(
    ("make", "by_hand", "targets"),
    [
        (_efficientnet, _by_hand_efficientnet, ["conv_pw", "conv_pwl"]),
        (_vit, _by_hand_vit, ["qkv", "fc1"]),
    ],
    ids=["efficientnet_lite0", "vit_tiny"],
)
def test_tap_returns_the_maps_of_the_submodules(make, by_hand, targets):
    import peft

    model = make().eval()
    x = torch.randn(2, 3, IMG, IMG)
    layers = default_layers(model)
    with torch.no_grad(), FeatureMapTap(model, layers) as tap:
        embeddings = model(x)
        maps = tap.pop()
        with pytest.raises(RuntimeError, match="no output"):
            tap.pop()
        expected = by_hand(model, x)
        for name, fm in zip(layers, maps, strict=True):
            torch.testing.assert_close(fm, expected[name])
        assert embeddings.shape[0] == 2

        # Under peft LoRA (names gain a prefix), with a non-zero adapter.
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=targets))
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
        lora_tap = FeatureMapTap(wrapped, layers)
        wrapped(x)
        adapted = lora_tap.pop()
        by_hand_adapted = by_hand(wrapped.base_model.model, x)
        for name, fm in zip(layers, adapted, strict=True):
            torch.testing.assert_close(fm, by_hand_adapted[name])
        assert not torch.allclose(adapted[-1], maps[-1])
        with wrapped.disable_adapter():  # the engine's teacher pass
            wrapped(x)
            for fm, base in zip(lora_tap.pop(), maps, strict=True):
                torch.testing.assert_close(fm, base)
        lora_tap.close()
        wrapped(x)
        with pytest.raises(RuntimeError):
            lora_tap.pop()


def test_tap_keeps_gradients_and_resolves_names():
    model = Classifier(_efficientnet(), 1280, 2, {})
    tap = FeatureMapTap(model.backbone, ["blocks.2"])
    model(torch.randn(2, 3, IMG, IMG))
    (fm,) = tap.pop()
    fm.square().sum().backward()
    assert model.backbone.conv_stem.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no module named"):
        FeatureMapTap(model.backbone, ["blocks.99"])
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_layer(
            nn.ModuleDict({"a": nn.Sequential(nn.ReLU()), "b": nn.Sequential(nn.ReLU())}), "0"
        )
    tap.close()
