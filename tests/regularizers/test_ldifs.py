"""LDIFS against the formula in NumPy, its normalisation, its layers and its state."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from riftune import regularizers
from riftune.models.classifier import Classifier
from riftune.models.feature_maps import default_layers
from riftune.regularizers.base import PretrainedView, StepInputs
from riftune.regularizers.ldifs import LDIFS, FeatureSpaceDistance
from riftune.runs import checkpoint_file as ckpt


def _numpy_ldifs(maps: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """Channel-normalised squared distance, mean over (c, positions), layers, then samples."""
    per_layer = []
    for fm, fm0 in zip(maps, refs, strict=True):
        n, c = fm.shape[:2]
        a, b = fm.reshape(n, c, -1), fm0.reshape(n, c, -1)
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        per_layer.append(((a - b) ** 2).reshape(n, -1).mean(1))
    return float(np.mean(np.mean(per_layer, 0)))


def _steps(maps, refs):
    fm = [torch.tensor(m, dtype=torch.float32, requires_grad=True) for m in maps]
    ref = [torch.tensor(m, dtype=torch.float32, requires_grad=True) for m in refs]
    return fm, ref, StepInputs(torch.zeros(3, 1), feature_maps=fm, reference_feature_maps=ref)


def test_penalty_matches_numpy_on_an_image_map_and_a_token_map(tmp_path):
    gen = np.random.default_rng(2)
    maps = [gen.normal(size=(3, 4, 5, 6)), gen.normal(size=(3, 7, 9))]
    refs = [gen.normal(size=m.shape) for m in maps]
    reg = LDIFS(layers=["a", "b"])
    fm, ref, step = _steps(maps, refs)
    value = reg.penalty(step)
    assert value.item() == pytest.approx(_numpy_ldifs(maps, refs), rel=1e-5)
    value.backward()
    assert all(t.grad.abs().sum() > 0 for t in fm) and all(t.grad is None for t in ref)

    tensors, meta = ckpt.flatten_state({"regularizer": reg.state_dict()})
    path = ckpt.save_checkpoint(tmp_path, "step-1", tensors, meta)
    fresh = LDIFS()
    fresh.load_state_dict(ckpt.unflatten_state(*ckpt.load_checkpoint(path))["regularizer"])
    assert fresh.feature_layers == ["a", "b"]
    with pytest.raises(ValueError, match="prepared for 2 layers"):
        reg.penalty(
            StepInputs(torch.zeros(3, 1), feature_maps=fm[:1], reference_feature_maps=ref[:1])
        )
    with pytest.raises(ValueError, match="feature maps"):
        reg.penalty(StepInputs(torch.zeros(3, 1)))


def test_a_hand_worked_case_and_the_normalisation():
    # one sample, one layer, two positions: channel vectors (3, 4)/(4, 3) against (1, 0)/(0, 2)
    fm = torch.tensor([[[3.0, 4.0], [4.0, 3.0]]])  # (n=1, c=2, positions=2)
    fm0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    # unit vectors (0.6, 0.8) vs (1, 0) and (0.8, 0.6) vs (0, 1): squared distances 0.8 and 0.8
    assert FeatureSpaceDistance()([fm], [fm0]).item() == pytest.approx(0.8 / 2)
    # a positive rescaling of each position's channel vector leaves LDIFS at zero
    scale = torch.tensor([[[2.0, 0.5]]])
    assert FeatureSpaceDistance()([fm * scale], [fm]).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        FeatureSpaceDistance()([fm], [fm0[:, :1]])


def test_layers_default_to_deltas_and_the_flag_parses():
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    model = Classifier(backbone, backbone.num_features, 2, backbone.pretrained_cfg)
    reg = regularizers.get("ldifs")()
    reg.prepare(PretrainedView(model=model, train_embeddings=torch.zeros(4, 1280)))
    assert reg.feature_layers == default_layers(backbone) and len(reg.feature_layers) > 2
    options = LDIFS.Options(layers="blocks.1, blocks.3")
    assert LDIFS.from_options(options, 1280).feature_layers == ["blocks.1", "blocks.3"]
    assert LDIFS.reference == "teacher" and LDIFS.needs_feature_maps and LDIFS.default_lam == 10
