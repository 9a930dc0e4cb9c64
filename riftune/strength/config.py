"""The settings of a ``riftune tune`` study: the CLI's flags and ``riftune.tune(...)``'s mapping.

:class:`TuneConfig` holds what to search and how to estimate; ``finetune`` holds the finetune
flags of the recipe every trial shares (data, backbone, epochs, ...), as the command line's
unknown flags or, in Python, a mapping ``{"data": "breastmnist", "epochs": 5}`` (``True`` for
a bare switch).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from riftune.config import load_yaml
from riftune.errors import UserError
from riftune.options import coerce, field_types
from riftune.runs.launchers import slurm_settings
from riftune.strength.ladder import DEFAULT_DRIFT_FRACTIONS

DEFAULT_CV_BELOW = 2000
"""k-fold cross-validation when the validation split has fewer images than this, else
repeated seeds on it: at 0.5 AUC points of tolerance, a split of a few hundred images (78 in
BreastMNIST) moves AUC by more than that from one draw to the next, so it must be pooled and
resampled; a split of thousands can be reused with fresh training seeds."""


@dataclass(frozen=True)
class TuneConfig:
    """What ``riftune tune`` searches, how it estimates, and where it writes.

    Attributes:
        out: The study folder (resumable).
        finetune: The shared finetune flags, e.g. ``("--data", "breastmnist", "--epochs", "5")``.
        methods: Finetuning methods (``full`` must be one; each also runs alone).
        regularizers: Regularizers laddered with each method.
        ladder: ``budget`` (similarity budgets anchored on plain's drift; regularizers without
            a similarity take λ) or ``lam`` (λ for every regularizer).
        budgets: Fractions of plain finetuning's drift the budget rungs keep.
        lams: λ rungs; None: 0.1, 1 and 10 times each regularizer's default λ.
        folds: Folds of train + val (or seeds on val, when val is large) each candidate runs.
        cv_below: Cross-validate when the validation split has fewer images than this.
        tolerance: Non-inferiority margin, in AUC points.
        z: One-sided normal quantile of the rule's lower bound (1.645: 95 %).
        prune_margin: A candidate whose mean paired AUC difference after any fold is below
            −(tolerance + prune_margin) points stops there.
        jobs: Local runs at once.
        launcher: ``local`` or ``slurm`` (submitit).
        slurm: :class:`~riftune.runs.launchers.SlurmLauncher` settings.
        quiet: Only the final summary.
    """

    out: str
    finetune: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("full",)
    regularizers: tuple[str, ...] = ("rift",)
    ladder: Literal["budget", "lam"] = "budget"
    budgets: tuple[float, ...] = DEFAULT_DRIFT_FRACTIONS
    lams: tuple[float, ...] | None = None
    folds: int = 3
    cv_below: int = DEFAULT_CV_BELOW
    tolerance: float = 0.5
    z: float = 1.645
    prune_margin: float = 1.5
    jobs: int = 1
    launcher: Literal["local", "slurm"] = "local"
    slurm: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.ladder not in ("budget", "lam"):
            raise UserError(f"--ladder {self.ladder!r}: choose budget or lam")
        if self.launcher not in ("local", "slurm"):
            raise UserError(f"--launcher {self.launcher!r}: choose local or slurm")
        if self.folds < 2:
            raise UserError(f"--folds {self.folds}: the paired standard error needs at least 2")
        for name in ("tolerance", "prune_margin"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0")
        if not self.z > 0 or self.jobs < 1 or self.cv_below < 0:
            raise UserError("--z must be > 0, --jobs >= 1 and --cv-below >= 0")
        if self.slurm and self.launcher != "slurm":
            raise UserError("SLURM settings need --launcher slurm")

    @property
    def folder(self) -> Path:
        return Path(self.out)

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | str | Path) -> TuneConfig:
        """From ``riftune.tune``'s mapping (or a YAML file of it): the fields above, lists (or
        comma-separated text) for tuples, ``finetune`` a mapping of flag names to values.

        Raises:
            UserError: an unreadable file, an unknown setting or a value of the wrong type.
        """
        if isinstance(values, str | Path):
            path = Path(values)
            if not path.is_file():
                raise UserError(f"tune settings {path} not found")
            values = load_yaml(path) or {}
        if not isinstance(values, dict):
            raise UserError("riftune.tune takes a mapping of its settings or a YAML file")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names, key=str)
        if unknown:
            raise UserError(f"tune: unknown settings {unknown}; known: {sorted(names)}")
        values = dict(values)
        if "out" not in values:
            raise UserError("tune: give out, the study folder")
        values["finetune"] = flags_of(values.get("finetune") or {})
        for key, kind in _LISTS.items():
            if values.get(key) is not None:
                values[key] = _items(values[key], kind, key)
        if not isinstance(values.get("slurm", {}), dict):
            raise UserError(f"tune: slurm {values['slurm']!r}: give a mapping of its settings")
        types = field_types(cls)
        for key in set(values) - {*_LISTS, "finetune", "slurm"}:
            values[key] = coerce(values[key], types[key], f"tune: {key}")
        return cls(**values)


_LISTS = {"methods": str, "regularizers": str, "budgets": float, "lams": float}


def _items(value: Any, kind: type, key: str) -> tuple:
    """A setting's list (or comma-separated text) as a tuple of ``kind``; UserError if not."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, list | tuple):
            raise TypeError
        return tuple(coerce(v, kind, "") if kind is str else float(v) for v in items)
    except (TypeError, ValueError):
        raise UserError(f"tune: {key} {value!r}: give a list of {kind.__name__} values") from None


def flags_of(finetune: dict[str, Any] | Sequence[str]) -> tuple[str, ...]:
    """Finetune flags from a mapping (``{"img_size": 28, "augment": False}``) or a flag list."""
    if not isinstance(finetune, dict | list | tuple):
        raise UserError(f"tune: finetune {finetune!r}: give a mapping of finetune flags")
    if not isinstance(finetune, dict):
        return tuple(str(v) for v in finetune)
    flags: list[str] = []
    for key, value in finetune.items():
        if not isinstance(key, str):
            raise UserError(f"tune: finetune flag {key!r}: give the flag's name")
        name = "--" + key.replace("_", "-")
        if value is True:
            flags.append(name)
        elif value is False:
            flags.append("--no-" + name[2:])
        elif value is not None:
            flags += [name, str(value)]
    return tuple(flags)


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{text!r}: give comma-separated numbers") from None


def from_args(args: argparse.Namespace, passthrough: Sequence[str]) -> TuneConfig:
    """The settings of ``riftune tune``'s flags; unknown flags are the shared finetune flags."""
    return TuneConfig(
        out=args.out,
        finetune=tuple(passthrough),
        methods=tuple(m for m in args.methods.split(",") if m),
        regularizers=tuple(r for r in args.regularizers.split(",") if r),
        ladder=args.ladder,
        budgets=_numbers(args.budgets),
        lams=_numbers(args.lams) if args.lams else None,
        folds=args.folds,
        cv_below=args.cv_below,
        tolerance=args.tolerance,
        z=args.z,
        prune_margin=args.prune_margin,
        jobs=args.jobs,
        launcher=args.launcher,
        slurm=slurm_settings(args),
        quiet=args.quiet,
    )
