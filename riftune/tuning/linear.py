"""Linear probing: a frozen backbone, only the head learns."""

from __future__ import annotations

from contextlib import AbstractContextManager

from riftune.models.classifier import Classifier
from riftune.tuning.base import FinetuningMethod, FrozenMode, eval_mode, is_head, register


@register
class Linear(FinetuningMethod):
    """Only the head trains; the whole backbone stays in eval mode.

    Eval mode keeps BatchNorm's running statistics pretrained (and switches dropout and
    drop-path off), so the backbone computes exactly the pretrained embeddings throughout and
    :meth:`pretrained_forward` needs to change nothing but the mode.
    """

    name = "linear"
    changes_embeddings = False

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name)

    def frozen_mode(self, phase: str) -> FrozenMode:
        return "backbone"

    def pretrained_forward(self, model: Classifier) -> AbstractContextManager[None]:
        return eval_mode(model.backbone)
