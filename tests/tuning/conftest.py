"""What the finetuning methods' tests share: backbones, a batch, training steps, snapshots.

Backbones are randomly initialized timm models (no weights needed): EfficientNet-Lite0 (a CNN
with BatchNorm and depthwise convolutions) and a tiny ViT on 32x32 images (4 patches + class
token).
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from riftune import tuning
from riftune.models.classifier import Classifier

NUM_CLASSES = 3
IMG = 32
VIT_ONLY = ["vpt", "adaptformer"]


def _classifier(backbone: nn.Module) -> Classifier:
    return Classifier(backbone, backbone.num_features, NUM_CLASSES, backbone.pretrained_cfg)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP threads waiting on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pristine() -> dict[str, Classifier]:
    torch.manual_seed(0)
    cnn = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=IMG)
    return {"cnn": _classifier(cnn), "vit": _classifier(vit)}


def _fresh(pristine: dict[str, Classifier], arch: str) -> Classifier:
    return copy.deepcopy(pristine[arch])


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, IMG, IMG, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return images, labels


def _train(
    model: Classifier,
    method: tuning.FinetuningMethod,
    steps: int = 2,
    lr: float = 1e-3,
    epoch: int = 0,
    epochs: int = 2,
) -> None:
    """``steps`` AdamW steps the way the engine takes them (train mode, then configure).

    Zero-initialized parts (LoRA's B, AdaptFormer's up-projection) leave their partners
    without gradient on the first step, so it takes two steps for every trainable tensor of
    those methods to move.
    """
    images, labels = _batch()
    model.train()
    method.configure(model, epoch, epochs)
    optimizer = torch.optim.AdamW(method.param_groups(model, lr, 10 * lr), weight_decay=0.01)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _eval_embed(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(images)


def _numel(params) -> int:
    return sum(p.numel() for p in params)
