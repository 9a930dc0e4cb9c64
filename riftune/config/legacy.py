"""Config files of earlier riftune versions, read in today's nested form.

Today's config.yaml is nested by section and marked ``riftune_config: 2``
(:data:`FORMAT_KEY`: :data:`FORMAT`). Run folders written before typed configs hold one flat
mapping of every flag's value (``rift_q: optimal``, ``lora_rank: 8``, ...):
:func:`nested_form` converts those with the flags' routes (:mod:`riftune.config.routing`).
Options added after a run was written take the value that run used
(:func:`with_predated_options`), not today's default.
"""

from __future__ import annotations

from typing import Any

from riftune import regularizers, tuning
from riftune.config.routing import component, flag_targets, nest_given
from riftune.errors import UserError
from riftune.options import allows_none, field_types

FORMAT_KEY = "riftune_config"
FORMAT = 2

#: (section, option) added after runs were written, and what those runs did without it
WRITTEN_WITHOUT = {("training", "channels_last"): "off"}


def nested_form(values: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """``values`` in the nested form, without the format key: as they are, or converted from
    an old flat config (``where`` names the file in errors).

    Raises:
        UserError: a section that is not a mapping, or a flat key that is no flag.
    """
    if FORMAT_KEY in values or all(isinstance(v, dict) for v in values.values()):
        nested = {k: v for k, v in values.items() if k != FORMAT_KEY}
        for key, value in nested.items():
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key} must be a mapping of options")
        return nested
    return nest_legacy(values, where)


def nest_legacy(flat: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A flat config.yaml of a run written before typed configs, in the nested form.

    It stored every flag. ``no_pretrained`` becomes ``pretrained``, ``null`` stands for a
    field's default where the field does not take None, and a component's ``from_legacy`` (if
    any) drops options its run did not use. A key that is no flag (a typo, or a section of the
    nested form beside flat keys) is an error, not dropped.
    """
    flat = dict(flat)
    if "no_pretrained" in flat:
        flat["pretrained"] = not flat.pop("no_pretrained")
    unknown = sorted(set(flat) - set(flag_targets()), key=str)
    if unknown:
        raise UserError(
            f"{where}: unknown keys {unknown}; a config file is nested by section "
            "(riftune finetune --print-config writes one)"
        )
    nested = nest_given(flat)
    nested.pop("output", None)
    for key, registry in (("method", tuning), ("regularizer", regularizers)):
        name = nested[key]["name"]
        options = component(registry, name, key).Options
        types = field_types(options)
        values = {k: v for k, v in nested[key].items() if k not in ("name", "lam")}
        values = {k: v for k, v in values.items() if v is not None or allows_none(types[k])}
        if hasattr(options, "from_legacy"):
            values = options.from_legacy(values)
        head = {k: v for k, v in nested[key].items() if k in ("name", "lam")}
        nested[key] = head | values
    return nested


def with_predated_options(values: dict[str, Any]) -> dict[str, Any]:
    """A run folder's nested config with each option it predates (:data:`WRITTEN_WITHOUT`)
    set to what its run did, where the file does not give the option."""
    values = dict(values)
    for (section, key), value in WRITTEN_WITHOUT.items():
        if isinstance(values.get(section, {}), dict):
            values[section] = {key: value} | values.get(section, {})
    return values
