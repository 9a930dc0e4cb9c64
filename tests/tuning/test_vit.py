"""The ViT-only methods' backbone check (riftune/tuning/vit.py)."""

from __future__ import annotations

import pytest

from riftune import tuning
from riftune.errors import UserError

from .conftest import (
    VIT_ONLY,
    _fresh,
)


@pytest.mark.parametrize("name", VIT_ONLY)
def test_vit_only_methods_refuse_a_cnn(pristine, name):
    with pytest.raises(UserError, match=r"needs a ViT backbone.*timm:vit_"):
        tuning.get(name)().apply(_fresh(pristine, "cnn"))
