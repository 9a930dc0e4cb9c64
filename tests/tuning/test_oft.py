"""OFT (riftune/tuning/oft.py): the layers it adapts, and training with every regularizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from riftune import regularizers, tuning
from riftune.distributed import DistributedContext
from riftune.engine.step import Teacher, TrainStep
from riftune.engine.weight import ConstantWeight
from riftune.regularizers import PretrainedView
from riftune.regularizers.delta import default_layers

from .conftest import (
    IMG,
    NUM_CLASSES,
    _eval_embed,
    _fresh,
    _snapshot,
)


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_oft_targets_linear_and_one_by_one_convolutions_only(pristine, arch):
    model = _fresh(pristine, arch)
    plain = dict(model.backbone.named_modules())
    tuning.OFT().apply(model)
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in model.backbone.named_modules()
        if hasattr(m, "oft_R")
    }
    expected = {
        name
        for name, m in plain.items()
        if isinstance(m, nn.Linear)
        or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1))
    }
    assert adapted == expected and adapted
    skipped = {"cnn": "conv_stem", "vit": "patch_embed.proj"}[arch]  # k x k, k > 1
    assert skipped in plain and skipped not in adapted


@pytest.mark.parametrize("reg_name", regularizers.available())
def test_oft_trains_through_the_training_step_with_every_regularizer(pristine, reg_name):
    """The engine's own step (teacher pass with adapters off, or the cache) with each penalty:
    the rotations and the head move, the frozen weights and BatchNorm statistics do not, and
    the pretrained function is still there afterwards."""
    model = _fresh(pristine, "cnn")
    method = tuning.OFT(block_size=8)
    method.apply(model)
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(8, 3, IMG, IMG, generator=gen)
    labels = torch.arange(8) % NUM_CLASSES
    indices = torch.arange(8)
    reference = _eval_embed(model.backbone, images)
    cls = regularizers.get(reg_name)
    reg = cls(dim=model.num_features, match="paired") if reg_name == "rift" else cls()
    if reg_name == "delta":  # one early layer (16 channels) keeps its channel ablation cheap
        reg = cls(layers=default_layers(model.backbone)[:1], attention_images=2)
    reg.prepare(
        PretrainedView(
            model=model,
            train_embeddings=reference,
            train_labels=labels,
            train_batches=lambda: [(images, labels, indices)],
        )
    )
    teacher = None
    if reg.reference == "teacher" or reg.needs_feature_maps:
        teacher = Teacher(
            model,
            lambda: method.pretrained_forward(model),
            feature_layers=reg.feature_layers if reg.needs_feature_maps else None,
        )
    optimizer = torch.optim.AdamW(
        method.param_groups(model, 1e-3, 1e-3) + [{"params": list(reg.parameters())}]
    )
    step = TrainStep(
        model, reg, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        torch.amp.GradScaler("cpu", enabled=False),
        DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
        weight=ConstantWeight(1.0), grad_clip=1.0, amp_dtype=None,
        reference_cache=reference if reg.reference == "cache" else None, teacher=teacher,
    )  # fmt: skip
    before = _snapshot(model)
    model.train()
    method.configure(model, 0, 1)
    losses = [step(images, labels, indices) for _ in range(4)]
    assert all(math.isfinite(out["loss"]) for out in losses)
    assert losses[-1]["task"] < losses[0]["task"]
    if reg.has_penalty and reg_name != "none":  # the representation moved, so the penalty did
        assert losses[-1]["reg"] != losses[0]["reg"]
    after = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for key, value in after.items():
        moved = not torch.equal(before[key], value)
        assert moved == (key in trainable), key
    with method.pretrained_forward(model), torch.no_grad():
        torch.testing.assert_close(model.backbone(images), reference, rtol=0, atol=1e-6)
