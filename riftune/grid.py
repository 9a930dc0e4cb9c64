"""What a ``riftune compare`` grid is made of: its file and flags resolved into lists, the
regularizer variants it names (``rift[match=paired,q=optimal]``) and each dataset's finetune
flags."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from riftune.config.run import flag_targets
from riftune.errors import UserError

_VARIANT = re.compile(r"^(?P<name>[\w-]+)(\[(?P<options>[^\]]*)\])?$")


@dataclass(frozen=True)
class RegularizerVariant:
    """A regularizer with fixed flags; ``label`` names it in reports (e.g. ``paired,optimal``)."""

    name: str
    flags: tuple[str, ...]
    label: str

    @property
    def folder(self) -> str:
        return self.name + (f"[{self.label}]" if self.label else "")


def parse_variant(text: str) -> RegularizerVariant:
    """``rift[match=paired,q=optimal]`` -> the flags ``--reg rift --rift-match paired ...``."""
    match = _VARIANT.match(text.strip())
    if match is None:
        raise UserError(f"cannot read regularizer {text!r}; write NAME or NAME[key=value,...]")
    name = match["name"]
    known = {"--" + dest.replace("_", "-") for dest in flag_targets()}
    flags: list[str] = ["--reg", name]
    values = []
    for item in filter(None, (match["options"] or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{item!r} in {text!r} needs the form key=value")
        flag = next((f for f in (f"--{name}-{key}", f"--{key}") if f in known), None)
        if flag is None:
            raise UserError(f"{text!r}: neither --{name}-{key} nor --{key} is a finetune flag")
        flags += [flag, value]
        values.append(value)
    return RegularizerVariant(name, tuple(flags), ",".join(values))


def resolve_grid(args: argparse.Namespace) -> dict:
    grid = {
        "data": ["breastmnist"],
        "methods": ["full"],
        "regs": ["none", "rift"],
        "lams": [0.1, 1.0, 10.0],
        "seeds": [0, 1, 2],
        "wise_ft": [],
        "wise_ft_alphas": "0,0.1,...,1",
        "shots": [None],
        "finetune": {},
        "dataset_finetune": {},
        "slurm": {},
    }
    if args.grid:
        path = Path(args.grid)
        if not path.is_file():
            raise UserError(f"grid file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        unknown = set(loaded) - set(grid)
        if unknown:
            raise UserError(f"{path}: unknown keys {sorted(unknown)}; use {sorted(grid)}")
        grid.update(loaded)
    lists = (("data", str), ("methods", str), ("lams", float), ("seeds", int), ("wise_ft", str))
    for key, convert in lists:
        text = getattr(args, key)
        if text:
            grid[key] = [convert(v) for v in text.split(",") if v.strip()]
    if args.wise_ft_alphas:
        grid["wise_ft_alphas"] = args.wise_ft_alphas
    if isinstance(grid["wise_ft_alphas"], list):  # YAML may list the values
        grid["wise_ft_alphas"] = ",".join(str(a) for a in grid["wise_ft_alphas"])
    unknown = set(grid["wise_ft"]) - set(grid["methods"])
    if unknown:
        raise UserError(f"wise-ft methods {sorted(unknown)} are not among the grid's methods")
    if args.regs:
        grid["regs"] = [v for v in re.split(r"[;\s]+", args.regs) if v]
    if args.shots:
        grid["shots"] = args.shots.split(",")
    grid["shots"] = [shots_value(k) for k in grid["shots"]]
    return grid


def shots_value(value) -> int | None:
    """A training-set size of the grid: K > 0 images per class, or None (``all``/null)."""
    if value is None or value == "all":
        return None
    try:
        shots = int(value)
    except (TypeError, ValueError):
        shots = 0
    if shots <= 0 or str(value).strip() != str(shots):
        raise UserError(f"shots {value!r}: give a positive number of images per class or 'all'")
    return shots


def finetune_flags(grid: dict, passthrough: Sequence[str], dataset: str) -> list[str]:
    """``finetune`` flags, then the dataset's own (``dataset_finetune``), then the command
    line's pass-through flags; a later value of a flag overrides an earlier one."""
    flags = []
    own = (grid["dataset_finetune"] or {}).get(dataset) or {}
    for key, value in {**grid["finetune"], **own}.items():
        flags += [f"--{key}"] + ([] if value is True else [str(value)])
    return flags + list(passthrough)
