"""The peft adapter methods (riftune/tuning/peft_adapter.py): merged weights load into the plain model."""

from __future__ import annotations

import copy

import pytest
import torch

from riftune import tuning

from .conftest import (
    _batch,
    _eval_embed,
    _fresh,
    _train,
)

ADAPTERS = ["lora", "oft"]  # peft methods: zero-initialized, merged into the plain weights


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_merged_adapter_weights_load_into_the_plain_architecture(pristine, arch, name):
    model = _fresh(pristine, arch)
    method = tuning.get(name)()
    method.apply(model)
    _train(model, method, steps=1, lr=1e-2)  # B / the rotation moves off zero
    state = method.merged_backbone_state(model)
    pretrained = pristine[arch].backbone.state_dict()
    assert state.keys() == pretrained.keys()
    assert any(not torch.equal(state[k], v) for k, v in pretrained.items())
    # Compared in float64, so float32 rounding through a deep network does not hide the merge.
    images = _batch(n=2)[0].double()
    plain = copy.deepcopy(pristine[arch].backbone).double()
    plain.load_state_dict(state, strict=True)
    merged = _eval_embed(plain, images)
    adapted = _eval_embed(model.backbone.double(), images)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
