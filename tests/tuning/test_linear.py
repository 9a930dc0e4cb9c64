"""Linear probing (riftune/tuning/linear.py): a frozen backbone in eval mode."""

from __future__ import annotations

import copy

import torch

from riftune import tuning

from .conftest import (
    _batch,
    _eval_embed,
    _fresh,
    _train,
)


def test_linear_keeps_the_backbone_in_eval_mode_and_its_embeddings_pretrained(pristine):
    model = _fresh(pristine, "cnn")
    images, _ = _batch()
    reference = _eval_embed(copy.deepcopy(model.backbone), images)
    method = tuning.Linear()
    _train(model, method)
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training
    model.train()
    method.configure(model, 1, 2)
    with method.pretrained_forward(model), torch.no_grad():
        inside = model.backbone(images)
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-6)
    assert model.head.training and not model.backbone.training
