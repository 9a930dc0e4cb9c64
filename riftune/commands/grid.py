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

from riftune.config.routing import flag_targets
from riftune.errors import UserError

_VARIANT = re.compile(r"^(?P<name>[\w-]+)(\[(?P<options>[^\]]*)\])?$")


_BUDGET_FLAGS = frozenset({"--budget", "--target-similarity"})


@dataclass(frozen=True)
class RegularizerVariant:
    """A regularizer with fixed flags; ``label`` names it in reports (e.g. ``paired,optimal``).

    ``lams`` is the variant's own λ grid (None: the grid's ``lams``) and ``select_seeds`` how
    many of the grid's first seeds its λ sweep runs on (None: the grid's ``select_seeds``)."""

    name: str
    flags: tuple[str, ...]
    label: str
    lams: tuple[float, ...] | None = None
    select_seeds: int | None = None

    @property
    def folder(self) -> str:
        return self.name + (f"[{self.label}]" if self.label else "")

    @property
    def has_lam(self) -> bool:
        """Whether runs of this variant take ``--lam``: not ``none``, and not under a
        similarity budget (λ is then found during training)."""
        return self.name != "none" and not _BUDGET_FLAGS & set(self.flags)

    def lam_grid(self, grid_lams: Sequence[float]) -> list[float | None]:
        if not self.has_lam:
            return [None]
        return list(self.lams if self.lams is not None else grid_lams)


def parse_regularizer_entry(entry) -> RegularizerVariant:
    """One entry of a grid's ``regs``: variant text, or a mapping ``{reg: TEXT, lams: [...],
    select_seeds: N}`` giving the variant its own λ grid and number of selection seeds."""
    if isinstance(entry, str):
        return parse_variant(entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("reg"), str):
        raise UserError(
            f"regs entry {entry!r}: write NAME[key=value,...] or {{reg: ..., lams: ...}}"
        )
    unknown = set(entry) - {"reg", "lams", "select_seeds"}
    if unknown:
        raise UserError(f"regs entry {entry['reg']!r}: unknown keys {sorted(unknown, key=str)}")
    variant = parse_variant(entry["reg"])
    lams = entry.get("lams")
    if lams is not None:
        try:
            lams = tuple(float(v) for v in lams)
        except (TypeError, ValueError):
            raise UserError(
                f"regs entry {entry['reg']!r}: lams must be a list of numbers"
            ) from None
    seeds = entry.get("select_seeds")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise UserError(f"regs entry {entry['reg']!r}: select_seeds must be a positive integer")
    return RegularizerVariant(variant.name, variant.flags, variant.label, lams, seeds)


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
        "select_seeds": 1,
        "finetune": {},
        "dataset_finetune": {},
        "shots_finetune": {},
        "slurm": {},
    }
    if args.grid:
        path = Path(args.grid)
        if not path.is_file():
            raise UserError(f"grid file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not a YAML grid file ({type(err).__name__})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a grid file is a mapping of keys (data, regs, ...)")
        unknown = set(loaded) - set(grid)
        if unknown:
            raise UserError(f"{path}: unknown keys {sorted(unknown, key=str)}; use {sorted(grid)}")
        _check_types(loaded, path)
        grid.update({k: v for k, v in loaded.items() if v is not None})  # empty: the default
    unknown = set(grid["dataset_finetune"] or {}) - set(grid["data"])
    if unknown:  # checked against the file's datasets: --data may run a subset of them
        raise UserError(
            f"dataset_finetune names datasets not in the grid: {sorted(unknown, key=str)}"
        )
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
    if args.regs:  # a variant the file defines keeps its own λ grid and selection seeds
        defined = {(e["reg"] if isinstance(e, dict) else e): e for e in grid["regs"]}
        grid["regs"] = [defined.get(v, v) for v in re.split(r"[;\s]+", args.regs) if v]
    grid["shots_finetune"] = {shots_value(k): v for k, v in (grid["shots_finetune"] or {}).items()}
    unknown = set(grid["shots_finetune"]) - {shots_value(k) for k in grid["shots"]}
    if unknown:  # checked against the file's sizes: --shots may run a subset of them
        raise UserError(f"shots_finetune names training-set sizes not in the grid: {unknown}")
    if args.shots:
        grid["shots"] = args.shots.split(",")
    grid["shots"] = [shots_value(k) for k in grid["shots"]]
    seeds = grid["select_seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"select_seeds {seeds!r}: give a positive integer")
    empty = [key for key in ("data", "methods", "regs", "lams", "seeds", "shots") if not grid[key]]
    if empty:
        raise UserError(f"the grid's {', '.join(empty)} must list at least one value")
    return grid


# the entries of each list a grid file holds (shots' values are checked by shots_value)
_LIST_KEYS = {"data": str, "methods": str, "lams": (int, float), "seeds": int, "wise_ft": str,
              "shots": (int, str, type(None)), "regs": (str, dict)}  # fmt: skip
_MAPPING_KEYS = ("finetune", "dataset_finetune", "shots_finetune", "slurm")


def _check_types(loaded: dict, path: Path) -> None:
    """Refuse a grid file whose values have the wrong type (a string where a list belongs
    would otherwise run one job per letter)."""
    for key, kinds in _LIST_KEYS.items():
        if loaded.get(key) is None:
            continue
        value = loaded[key]
        if not isinstance(value, list):
            raise UserError(f"{path}: {key} must be a list ({key}: [...]), not {value!r}")
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kinds)]
        if bad:
            raise UserError(f"{path}: {key} holds {bad[0]!r}, which is not a valid entry")
    for key in _MAPPING_KEYS:
        if loaded.get(key) is not None and not isinstance(loaded[key], dict):
            raise UserError(f"{path}: {key} must be a mapping (key: value lines)")
    alphas = loaded.get("wise_ft_alphas")
    if alphas is not None and not isinstance(alphas, str | list):
        raise UserError(f"{path}: wise_ft_alphas must be a list or 'START,STEP,...,END'")


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


def finetune_flags(
    grid: dict, passthrough: Sequence[str], dataset: str, shots: int | None = None
) -> list[str]:
    """``finetune`` flags, then the dataset's own (``dataset_finetune``), then the training-set
    size's (``shots_finetune``, e.g. a smaller batch for 10 images per class), then the command
    line's pass-through flags; a later value of a flag overrides an earlier one."""
    flags = []
    own = (grid["dataset_finetune"] or {}).get(dataset) or {}
    sized = (grid.get("shots_finetune") or {}).get(shots) or {}
    for key, value in {**grid["finetune"], **own, **sized}.items():
        flags += [f"--{key}"] + ([] if value is True else [str(value)])
    return flags + list(passthrough)
