"""LP-FT (riftune/tuning/lp_ft.py): its probe and finetune phases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.modules.batchnorm import _BatchNorm

from riftune import tuning
from riftune.errors import UserError

from .conftest import (
    _fresh,
    _numel,
)


def test_lp_ft_probes_then_finetunes_at_the_right_epoch(pristine):
    model = _fresh(pristine, "cnn")
    method = tuning.LPFT()
    n_head = _numel(model.head.parameters())
    for epoch in range(6):
        model.train()
        method.configure(model, epoch, 6)
        n_trainable = _numel(p for p in model.parameters() if p.requires_grad)
        bn_training = [m.training for m in model.modules() if isinstance(m, _BatchNorm)]
        if epoch < 3:  # default: half of the epochs
            assert method.phase(epoch, 6) == "probe"
            assert n_trainable == n_head
            assert not model.backbone.training and not any(bn_training)
        else:
            assert method.phase(epoch, 6) == "finetune"
            assert n_trainable == _numel(model.parameters())
            assert model.backbone.training and all(bn_training)
    assert [tuning.LPFT(lp_epochs=1).phase(e, 4) for e in range(4)] == ["probe"] + ["finetune"] * 3
    assert tuning.LPFT().phase(0, 1) == "finetune"  # a one-epoch run has no probe phase
    with pytest.raises(UserError, match="--lp-epochs 4 leaves no finetuning epoch"):
        tuning.LPFT(lp_epochs=4).phase(0, 4)
    assert method.pretrained_forward(model) is None


@settings(max_examples=30, deadline=None)
@given(epochs=st.integers(2, 50), data=st.data())
def test_lp_ft_phase_is_probe_exactly_before_lp_epochs(epochs, data):
    lp_epochs = data.draw(st.integers(0, epochs - 1))
    phases = [tuning.LPFT(lp_epochs).phase(e, epochs) for e in range(epochs)]
    assert phases == ["probe"] * lp_epochs + ["finetune"] * (epochs - lp_epochs)
    default = [tuning.LPFT().phase(e, epochs) for e in range(epochs)]
    assert default.count("probe") == epochs // 2
