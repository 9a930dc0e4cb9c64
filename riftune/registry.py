"""One small registry of named things (backbones, finetuning methods, regularizers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one kind by name, for ``--reg NAME``-style lookups.

    Args:
        kind: what the items are, for messages ("regularizer", "finetuning method").
        name_of: the name :meth:`register` files an item under; by default its ``name``
            attribute (the registered classes declare one).

    Example::

        METHODS: Registry[type[FinetuningMethod]] = Registry("finetuning method")

        @METHODS.register
        class LoRA(FinetuningMethod):
            name = "lora"
    """

    def __init__(self, kind: str, name_of: Callable[[T], str] | None = None):
        self.kind = kind
        self._name_of = name_of or (lambda item: item.name)  # type: ignore[attr-defined]
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Decorator: file ``item`` under its name and return it unchanged.

        Raises:
            ValueError: the name is empty, or another item holds it already.
        """
        return self.add(self._name_of(item), item)

    def add(self, name: str, item: T) -> T:
        """File ``item`` under ``name``; registering the same item again is a no-op.

        Raises:
            ValueError: ``name`` is empty, or another item holds it already.
        """
        if not name:
            label = getattr(item, "__qualname__", repr(item))
            raise ValueError(f"{label} needs a non-empty `name` to be registered")
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item filed under ``name``; a one-line ValueError listing the names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.available())}"
            ) from None

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
