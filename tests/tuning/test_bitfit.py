"""BitFit (riftune/tuning/bitfit.py): only the biases and the head learn."""

from __future__ import annotations

from riftune import tuning

from .conftest import (
    _fresh,
)


def test_bitfit_trains_batchnorm_shift_but_not_scale(pristine):
    model = _fresh(pristine, "cnn")
    method = tuning.BitFit()
    method.configure(model, 0, 1)
    bn = model.backbone.bn1
    assert bn.bias.requires_grad and not bn.weight.requires_grad
    assert not model.backbone.conv_stem.weight.requires_grad
    assert method.pretrained_forward(model) is None
