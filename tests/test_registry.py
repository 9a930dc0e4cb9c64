"""The one registry helper, and the three registries built on it."""

from __future__ import annotations

import pytest

from riftune import models, regularizers, tuning
from riftune.registry import Registry


class _Item:
    def __init__(self, name: str):
        self.name = name


def test_register_get_available_and_the_one_line_errors():
    reg: Registry[_Item] = Registry("widget")
    b, a = _Item("b"), _Item("a")
    assert reg.register(b) is b  # a decorator hands the item back
    reg.register(a)
    reg.register(a)  # the same item again: no-op
    assert reg.available() == ["a", "b"]
    assert reg.get("a") is a and "b" in reg and "c" not in reg
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; choose one of: a, b$"):
        reg.get("c")
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        reg.register(_Item("a"))
    with pytest.raises(ValueError, match="non-empty `name`"):
        reg.register(_Item(""))
    named = Registry("factory", name_of=lambda f: f.__name__)
    assert named.register(test_register_get_available_and_the_one_line_errors)
    assert named.available() == ["test_register_get_available_and_the_one_line_errors"]


def test_methods_regularizers_and_backbones_use_it():
    assert tuning.base.METHODS.available() == tuning.available()
    assert regularizers.base.REGULARIZERS.available() == regularizers.available()
    assert models.BACKBONES.available() == models.available_backbones()
    assert models.DEFAULT_BACKBONE in models.BACKBONES
    assert regularizers.get("rift") is regularizers.RIFT
    assert tuning.get("lora") is tuning.LoRA
    with pytest.raises(ValueError, match=r"^unknown regularizer 'x'; choose one of: bss, cka, "):
        regularizers.get("x")
    with pytest.raises(ValueError, match=r"^unknown finetuning method 'x'; choose one of: "):
        tuning.get("x")
    with pytest.raises(ValueError, match="a regularizer named 'rift' is already registered"):

        @regularizers.register
        class Other(regularizers.Regularizer):
            name = "rift"
