"""Declaring a configuration field once: its default, help text, flag spelling and check.

Every section of a run's configuration is a dataclass whose fields are made with :func:`option`.
The command line (:mod:`riftune.config.flags`) and the YAML form (:mod:`riftune.config.run`) are
generated from these declarations, and :class:`Section` checks every value when it is built, so
a value is validated the same way whether it came from a flag, a file or Python.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from riftune.errors import UserError

Check = Callable[[Any], str | None]
"""A value check: an error text (``"must be > 0"``) or ``None`` when the value is fine."""


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    check: Check | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    negatable: bool = True,
) -> Any:
    """A dataclass field of a configuration section.

    Args:
        default: the default value (immutable).
        help: the ``--help`` text, without the default (appended by the flag generator).
        flag: the flag spelling, e.g. ``"--reference"``; default ``--PREFIX-FIELD-NAME``.
        check: value check, run when the section is built.
        parse: converts the flag's text to the value (default: from the field's type).
        metavar: how ``--help`` names the value.
        negatable: for booleans, whether ``--no-FLAG`` exists as well.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "check": check,
        "parse": parse,
        "metavar": metavar,
        "negatable": negatable,
    }
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number >= 0"
    return None if value >= 0 else "must be >= 0"


def positive_finite(value: Any) -> str | None:
    if value is None:
        return None
    return None if math.isfinite(value) and value > 0 else "must be a finite number > 0"


def fraction(value: Any) -> str | None:
    """In (0, 1]."""
    return None if value is None or 0 < value <= 1 else "must be in (0, 1]"


def unit_interval(value: Any) -> str | None:
    """In [0, 1]."""
    return None if value is None or 0 <= value <= 1 else "must be in [0, 1]"


class Section:
    """Base of every configuration dataclass: checks each field when built.

    Subclasses set ``flag_prefix`` (``"rift"`` gives ``--rift-match`` for the field ``match``) and
    may define :meth:`check` for rules that involve several fields.
    """

    flag_prefix: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        types = field_types(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            choices = literal_choices(types[field.name])
            only_choices = all(
                typing.get_origin(k) is typing.Literal for k in _alternatives(types[field.name])
            )
            if only_choices and value not in choices and value is not None:
                raise UserError(
                    f"{flag_of(type(self), field)} {value!r}: choose one of: "
                    + ", ".join(map(str, choices))
                )
            check = field.metadata.get("check")
            if check is not None and (problem := check(value)) is not None:
                raise UserError(f"{flag_of(type(self), field)} {value}: {problem}")
        self.check()

    def check(self) -> None:
        """Checks across fields; raise :class:`UserError` naming the flags involved."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def flag_of(section: type, field: dataclasses.Field) -> str:
    """The flag spelling of ``field`` in ``section`` (``--rift-q-rank``)."""
    if field.metadata.get("flag"):
        return field.metadata["flag"]
    prefix = getattr(section, "flag_prefix", "")
    return "--" + (f"{prefix}-" if prefix else "") + field.name.replace("_", "-")


def flag(section: type, name: str) -> str:
    """The flag spelling of the field called ``name`` in ``section``."""
    return flag_of(section, next(f for f in dataclasses.fields(section) if f.name == name))


@functools.cache
def field_types(section: type) -> dict[str, Any]:
    """The resolved type annotation of each field of ``section``."""
    return typing.get_type_hints(section)


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else ()."""
    for kind in _alternatives(annotation):
        if typing.get_origin(kind) is typing.Literal:
            return typing.get_args(kind)
    return ()


def from_mapping(section: type, values: dict[str, Any], where: str) -> Any:
    """Build ``section`` from ``values`` (YAML or keyword form); unknown keys are an error.

    Values are converted to the field's type where YAML may give another (``1`` for ``1.0``).
    """
    names = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - names, key=str)  # YAML keys may be numbers
    if unknown:
        raise UserError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    types = field_types(section)
    return section(**{k: coerce(v, types[k], f"{where}.{k}") for k, v in values.items()})


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as ``annotation`` (int -> float, checks bool/str/Literal); UserError if it can't."""
    if value is None:
        if allows_none(annotation):
            return None
        raise UserError(f"{where}: null is not allowed")
    for kind in _alternatives(annotation):
        if typing.get_origin(kind) is typing.Literal:
            if value in typing.get_args(kind):
                return value
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is str:
            if isinstance(value, str):
                return value
        elif kind is Any:
            return value
    raise UserError(f"{where}: {value!r} is not a valid value ({_describe(annotation)})")


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, _UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, _UnionType) and type(
        None
    ) in typing.get_args(annotation)


def _describe(annotation: Any) -> str:
    parts = []
    for kind in _alternatives(annotation):
        if typing.get_origin(kind) is typing.Literal:
            parts.append("one of " + ", ".join(map(str, typing.get_args(kind))))
        else:
            parts.append(getattr(kind, "__name__", str(kind)))
    return " or ".join(parts) + (" or null" if allows_none(annotation) else "")


_UnionType = type(int | None)


@dataclass
class NoOptions(Section):
    """The options of a component that has none."""
