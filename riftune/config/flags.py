"""The flags of ``riftune finetune``, generated from the configuration dataclasses.

Each field of a section (:mod:`riftune.config.sections`) and of each registered method's and
regularizer's ``Options`` becomes one flag, with its help text, its default, its choices (from a
``Literal`` type) and its value parser, so a new option is declared in one place. Flags default
to "not given" (``argparse.SUPPRESS``): what the user typed is laid over ``--config FILE``, which
is laid over the dataclass defaults, and :class:`~riftune.config.run.RunConfig` checks the result.

A small generator of our own rather than jsonargparse: every flag spelling that users, README
and the committed grid files use (``--rift-q``, ``--lam``, ``--reference``, ``--no-pretrained``)
must keep working, whereas jsonargparse derives nested names (``--regularizer.options.q``) and
would need an alias per flag; the generator is ~100 lines and adds no dependency.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from riftune import regularizers, tuning
from riftune.config.legacy import nested_form
from riftune.config.routing import dest_of, nest_given
from riftune.config.run import RunConfig, read_yaml
from riftune.config.sections import SECTIONS, OutputConfig
from riftune.errors import ArgumentParser
from riftune.options import Section, field_types, flag_of, literal_choices

_GROUPS = {
    "data": "data",
    "model": "backbone",
    "training": "training",
    "evaluation": "evaluation (may change on --resume)",
    "budget": "similarity budget (instead of a fixed --lam)",
}


def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``riftune finetune`` (also used by ``compare`` to check a grid's flags)."""
    config = parser.add_argument_group("configuration")
    config.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML run configuration (the form --print-config shows, or a run's config.yaml); "
        "flags given with it override its values",
    )
    config.add_argument(
        "--print-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the resolved configuration as YAML and exit",
    )
    seen: set[str] = set()
    for key, section in SECTIONS.items():
        _add_section(parser.add_argument_group(_GROUPS[key]), section, seen)

    method = parser.add_argument_group("finetuning method")
    method.add_argument(
        "--method",
        default=argparse.SUPPRESS,
        help=f"one of: {', '.join(tuning.available())} (default: full)",
    )
    for name in tuning.available():
        _add_section(method, tuning.get(name).Options, seen)

    reg = parser.add_argument_group("regularizer")
    reg.add_argument(
        "--reg",
        default=argparse.SUPPRESS,
        help=f"one of: {', '.join(regularizers.available())} (default: none)",
    )
    reg.add_argument(
        "--lam",
        type=float,
        default=argparse.SUPPRESS,
        help="weight of the regularizer: loss = task + lam * penalty (default: the "
        "regularizer's own: " + _default_lams() + ")",
    )
    for name in regularizers.available():
        _add_section(reg, regularizers.get(name).Options, seen)

    _add_section(parser.add_argument_group("output"), OutputConfig, seen)


def _default_lams() -> str:
    parts = []
    for name in regularizers.available():
        if name == "none":
            continue
        reg = regularizers.get(name)
        budget = (
            f" (given neither --lam nor a budget, it keeps --target-similarity "
            f"{reg.default_similarity:g} instead)"
            if reg.default_similarity is not None
            else ""
        )
        parts.append(f"{name} {reg.default_lam:g}{budget}")
    return ", ".join(parts)


def _add_section(group: argparse._ArgumentGroup, section: type[Section], seen: set[str]) -> None:
    types = field_types(section)
    for field in dataclasses.fields(section):
        flag = flag_of(section, field)
        if flag in seen:  # an option several components share (--reference)
            continue
        seen.add(flag)
        meta, annotation = field.metadata, types[field.name]
        default = field.default
        help_text = meta["help"] + ("" if default is None else f" (default: {_show(default)})")
        kwargs: dict[str, Any] = {
            "dest": dest_of(section, field),
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if annotation is bool:
            negatable = meta["negatable"]
            kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
        else:
            choices = literal_choices(annotation)
            if choices and meta["parse"] is None and all(isinstance(c, str) for c in choices):
                kwargs["choices"] = choices
            kwargs["type"] = meta["parse"] or _parser_of(annotation)
            kwargs["metavar"] = meta["metavar"]
        group.add_argument(flag, **kwargs)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _parser_of(annotation: Any):
    """The str -> value converter of a field's type (``int | None`` -> int)."""
    kinds = [
        k
        for k in typing.get_args(annotation) or (annotation,)
        if k is not type(None) and typing.get_origin(k) is not typing.Literal
    ]
    kind = kinds[0] if kinds else str
    return {int: int, float: float, str: str}.get(kind, str)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The finetune flags the user typed (by dest), without --config and --print-config."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


_NOT_CONFIG = {"config", "print_config", "command", "handler", "passthrough"}


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration of parsed finetune flags: defaults, then --config, then flags."""
    file = getattr(args, "config", None)
    base = nested_form(read_yaml(Path(file)), file) if file else {}
    return RunConfig.from_dict(nest_given(given_flags(args), base), where=file or "flags")


def finetune_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of the finetune flags (``compare`` checks grid flags with it)."""
    parser = ArgumentParser(prog="riftune finetune", add_help=False)
    add_finetune_flags(parser)
    return parser
