"""What the methods built on a peft adapter (LoRA, OFT) share: switching the adapter off to get
the pretrained function back, and merging it into plain weights."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn

from riftune.models.classifier import Classifier
from riftune.tuning.base import FinetuningMethod, eval_mode


class PeftAdapterMethod(FinetuningMethod):
    """Base of a method whose ``apply`` wraps the backbone in a peft ``PeftModel``."""

    def pretrained_forward(self, model: Classifier) -> AbstractContextManager[None]:
        return _adapters_disabled(model.backbone)

    def merged_backbone_state(self, model: Classifier) -> dict[str, torch.Tensor]:
        """The backbone's weights with the adapter merged in (peft's ``merge_and_unload`` on a
        copy), under the plain architecture's keys."""
        with torch.no_grad():
            merged = copy.deepcopy(model.backbone).merge_and_unload()
        return {k: v.detach() for k, v in merged.state_dict().items()}


@contextmanager
def _adapters_disabled(backbone: nn.Module) -> Iterator[None]:
    with eval_mode(backbone), backbone.disable_adapter():
        yield
