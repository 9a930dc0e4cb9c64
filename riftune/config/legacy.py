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
from riftune.options import allows_none, field_types

FORMAT_KEY = "riftune_config"
FORMAT = 2

#: (section, option) added after runs were written, and what those runs did without it
WRITTEN_WITHOUT = {("training", "channels_last"): "off"}


def nested_form(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` in the nested form, without the format key: as they are, or converted from
    an old flat config."""
    if FORMAT_KEY in values or all(isinstance(v, dict) for v in values.values()):
        return {k: v for k, v in values.items() if k != FORMAT_KEY}
    return nest_legacy(values)


def nest_legacy(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config.yaml of a run written before typed configs, in the nested form.

    It stored every flag. Flags that no longer exist are dropped, ``no_pretrained`` becomes
    ``pretrained``, ``null`` stands for a field's default where the field does not take None,
    and a component's ``from_legacy`` (if any) drops options its run did not use.
    """
    flat = dict(flat)
    if "no_pretrained" in flat:
        flat["pretrained"] = not flat.pop("no_pretrained")
    given = {k: v for k, v in flat.items() if k in flag_targets()}
    nested = nest_given(given)
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
