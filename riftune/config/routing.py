"""Where each flag's value goes in the run configuration.

A flag (by its argparse dest, which is also its key in old flat config files) routes to a
section's field (``--epochs`` -> ``training.epochs``) or to an option of one method or
regularizer (``--rift-q`` -> ``regularizer.q`` when ``--reg rift``). :func:`nest_given` lays
the flags a user typed over a nested configuration; :mod:`riftune.config.flags` builds the
parser and :mod:`riftune.config.legacy` converts old flat files with the same routes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from riftune import regularizers, tuning
from riftune.config.sections import SECTIONS, OutputConfig
from riftune.errors import UserError
from riftune.options import flag_of


@dataclass(frozen=True)
class FlagTarget:
    """Where a flag's value goes: a section's field, or a component's option."""

    section: str  # "data", ..., "method", "regularizer", "output"
    field: str
    component: str | None = None  # the method or regularizer that owns the option


def flag_targets() -> dict[str, list[FlagTarget]]:
    """Every flag (by its argparse dest, which is also its key in old flat config files) and
    where its value goes. A flag shared by several components (``--reference``) has a target in
    each."""
    targets: dict[str, list[FlagTarget]] = {
        "method": [FlagTarget("method", "name")],
        "reg": [FlagTarget("regularizer", "name")],
        "lam": [FlagTarget("regularizer", "lam")],
    }
    for key, section in {**SECTIONS, "output": OutputConfig}.items():
        for f in dataclasses.fields(section):
            targets.setdefault(dest_of(section, f), []).append(FlagTarget(key, f.name))
    for key, registry in (("method", tuning), ("regularizer", regularizers)):
        for name in registry.available():
            options = registry.get(name).Options
            for f in dataclasses.fields(options):
                targets.setdefault(dest_of(options, f), []).append(FlagTarget(key, f.name, name))
    return targets


def dest_of(section: type, f: dataclasses.Field) -> str:
    """The argparse dest of a field's flag: ``--rift-q-rank`` -> ``rift_q_rank``."""
    return flag_of(section, f)[2:].replace("-", "_")


def nest_given(given: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put flat flag values (by dest) into the nested form, on top of ``base`` (nested).

    Options of components other than the chosen method and regularizer are ignored, so one set
    of flags can serve a grid of several methods.
    """
    nested = {k: dict(v) for k, v in (base or {}).items()}
    targets = flag_targets()
    chosen = {
        "method": given.get("method", nested.get("method", {}).get("name", "full")),
        "regularizer": given.get("reg", nested.get("regularizer", {}).get("name", "none")),
    }
    for key in ("method", "regularizer"):
        section = nested.setdefault(key, {})
        if section.get("name", chosen[key]) != chosen[key]:  # another component: drop its options
            nested[key] = {"lam": section["lam"]} if "lam" in section else {}
        nested[key]["name"] = chosen[key]
    for dest, value in given.items():
        for target in targets.get(dest, []):
            if target.component is None or target.component == chosen[target.section]:
                nested.setdefault(target.section, {})[target.field] = value
    return nested


def component(registry, name: str, what: str) -> type:
    """The method or regularizer class ``name`` of ``registry`` (``what`` names the kind).

    Raises:
        UserError: no such name, with the registered ones listed.
    """
    try:
        return registry.get(name)
    except (ValueError, TypeError):  # TypeError: a list or mapping (from YAML) for the name
        raise UserError(
            f"unknown {what} {name!r}; choose one of: {', '.join(registry.available())}"
        ) from None
