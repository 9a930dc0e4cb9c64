"""The one model shape the rest of riftune sees: a backbone that embeds, and a linear head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ClassifierOutput(NamedTuple):
    """Logits (n, k) and the embeddings (n, d) that fed them."""

    logits: torch.Tensor
    embeddings: torch.Tensor


class Classifier(nn.Module):
    """``backbone`` maps images (n, 3, H, W) to embeddings (n, d); ``head`` maps them to logits.

    The backbone is a timm model built with ``num_classes=0`` (so its forward returns the pooled
    embedding) or anything with the same contract. Its classifier dropout is off
    (``drop_rate=0``): timm applies it to the pooled embedding itself, so in training the
    regularizers would see dropout noise as drift from the pretrained embeddings, and each
    process of a distributed run would draw different masks than one process does. Finetuning methods change the backbone
    (adapters, prompts, frozen parameters); regularizers see the embeddings.

    Attributes:
        backbone: images -> embeddings (n, d).
        head: ``nn.Linear(d, num_classes)``.
        num_features: d.
        pretrained_cfg: normalization and input size the backbone expects
            (``mean``, ``std`` as 3-tuples; ``input_size`` as (3, H, W)).
    """

    def __init__(
        self, backbone: nn.Module, num_features: int, num_classes: int, pretrained_cfg: dict
    ):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)
        self.pretrained_cfg = dict(pretrained_cfg)

    def reset_head(self, num_classes: int) -> None:
        """Replace the head by a freshly initialized ``nn.Linear(d, num_classes)``."""
        self.head = nn.Linear(self.num_features, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (n, d) of images (n, 3, H, W)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        embeddings = self.embed(images)
        return ClassifierOutput(self.head(embeddings), embeddings)
