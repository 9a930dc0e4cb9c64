"""The run configuration: every section composed, the only thing the library reads.

``RunConfig`` holds one dataclass per component. Its YAML form (config.yaml of a run folder,
``--config`` files, ``--print-config``) is nested by section; the finetuning method's and the
regularizer's sections hold only the chosen component's options:

    data: {data: breastmnist, img_size: 128, ...}
    model: {backbone: efficientnet_lite0, pretrained: true}
    method: {name: lora, rank: 8, alpha: 16.0, dropout: 0.0}
    regularizer: {name: rift, lam: 0.1, match: paired, q: optimal, ...}
    training: {seed: 0, epochs: 10, ...}
    evaluation: {eval_batch_size: 128, ...}

Run folders written before typed configs hold one flat mapping of every flag's value
(``rift_q: optimal``, ``lora_rank: 8``, ...); :meth:`RunConfig.from_dict` reads both forms
(:mod:`riftune.config.legacy` converts the old one). Where each flag's value goes is
:mod:`riftune.config.routing`'s job.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from riftune import regularizers, tuning
from riftune.config.legacy import FORMAT, FORMAT_KEY, nested_form, with_predated_options
from riftune.config.routing import component
from riftune.config.sections import (
    SECTIONS,
    BudgetConfig,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    OutputConfig,
    TrainingConfig,
)
from riftune.errors import UserError
from riftune.options import NoOptions, Section, from_mapping, non_negative


@dataclass
class MethodConfig:
    """``--method NAME`` and that method's own options."""

    name: str = "full"
    options: Section = field(default_factory=NoOptions)

    def __post_init__(self) -> None:
        registered = component(tuning, self.name, "method")
        if not isinstance(self.options, registered.Options):
            raise UserError(f"--method {self.name}: options must be {registered.Options.__name__}")

    def build(self) -> tuning.FinetuningMethod:
        return tuning.get(self.name).from_options(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.to_dict()}


@dataclass
class RegularizerConfig:
    """``--reg NAME``, its weight ``--lam`` (None: the regularizer's default) and options."""

    name: str = "none"
    lam: float | None = None
    options: Section = field(default_factory=NoOptions)

    def __post_init__(self) -> None:
        registered = component(regularizers, self.name, "regularizer")
        if not isinstance(self.options, registered.Options):
            raise UserError(f"--reg {self.name}: options must be {registered.Options.__name__}")
        if (problem := non_negative(self.lam)) is not None:
            raise UserError(f"--lam {self.lam}: {problem}")
        if self.name == "none":
            self.lam = None
        elif self.lam is None:
            self.lam = registered.default_lam

    @property
    def weight(self) -> float:
        """λ in loss = task + λ·penalty (0 for ``none``)."""
        return 0.0 if self.lam is None else self.lam

    def build(self, dim: int) -> regularizers.Regularizer:
        return regularizers.get(self.name).from_options(self.options, dim)

    def to_dict(self) -> dict[str, Any]:
        head = {"name": self.name} | ({} if self.lam is None else {"lam": self.lam})
        return head | self.options.to_dict()


@dataclass
class RunConfig:
    """Everything a finetuning run computes from, plus where it writes (``output``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        self._check_budget()
        reg = regularizers.get(self.regularizer.name)
        reg_flag = f"--reg {self.regularizer.name}"
        if self.training.batch_size < reg.min_batch_size:
            raise UserError(
                f"--batch-size {self.training.batch_size} is too small for {reg_flag}, which "
                f"needs at least {reg.min_batch_size} images per step; raise --batch-size"
            )
        self._check_micro_batches(reg, reg_flag)
        if reg.penalizes_features_only and not tuning.get(self.method.name).changes_embeddings:
            raise UserError(
                f"{reg_flag} has no effect with --method {self.method.name}: the backbone is "
                "frozen, so its features stay the pretrained ones; use --reg none or l2sp, or a "
                "method that trains the backbone"
            )

    def _check_micro_batches(self, reg, reg_flag: str) -> None:
        micro = self.training.micro_batches
        if micro == 1:
            return
        if self.training.batch_size % micro:
            raise UserError(
                f"--micro-batches {micro} does not divide --batch-size {self.training.batch_size}"
            )
        if not reg.splits_over_micro_batches:
            raise UserError(
                f"--micro-batches {micro} needs a penalty that splits over micro-batches; "
                f"{reg_flag} uses the statistics of the whole batch"
            )

    def _check_budget(self) -> None:
        if not self.budget.active:
            return
        name, reg = self.regularizer.name, regularizers.get(self.regularizer.name)
        if name == "none" or not reg.has_penalty:
            raise UserError(f"--budget needs a regularizer with a penalty, not --reg {name}")
        if self.budget.target_similarity is not None:  # refused here if it has no meaning
            reg.budget_for_similarity(self.budget.target_similarity, self.regularizer.options)

    @property
    def epsilon(self) -> float | None:
        """The budget ε on the penalty (from --budget or --target-similarity), or None."""
        if self.budget.target_similarity is not None:
            return regularizers.get(self.regularizer.name).budget_for_similarity(
                self.budget.target_similarity, self.regularizer.options
            )
        return self.budget.budget

    @property
    def initial_lam(self) -> float:
        """λ before the first step: --lam, or 0 under an additive budget."""
        if self.budget.active and self.budget.mode == "additive":
            return 0.0
        return self.regularizer.weight

    # ------------------------------------------------------------------------- YAML form
    def to_dict(self) -> dict[str, Any]:
        """The nested YAML form of what the run computes from (no ``output``; ``budget`` only
        when one is set)."""
        values = {
            FORMAT_KEY: FORMAT,
            **{key: getattr(self, key).to_dict() for key in SECTIONS},
            "method": self.method.to_dict(),
            "regularizer": self.regularizer.to_dict(),
        }
        if not self.budget.active:
            del values["budget"]
        return values

    def training_part(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one: everything but evaluation,
        the device, how often it checkpoints, the weights' layout as an option (the loop
        compares the layouts it resolves to) and where the data files are."""
        part = self.to_dict()
        part.pop("evaluation")
        part["training"] = {
            k: v
            for k, v in part["training"].items()
            if k not in ("device", "checkpoint_seconds", "channels_last")
        }
        part["data"] = {k: v for k, v in part["data"].items() if k != "data_root"}
        return part

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from the nested form, or from a flat pre-typed-config mapping."""
        if not isinstance(values, dict):
            raise UserError(f"{where} does not hold a riftune configuration")
        values = nested_form(values, where)
        known = {*SECTIONS, "method", "regularizer", "output"}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise UserError(f"{where}: unknown sections {unknown}; known: {sorted(known)}")
        for key, value in values.items():
            if not isinstance(value, dict):
                raise UserError(f"{where}.{key} must be a mapping of options")
        sections = {
            key: from_mapping(section, values.get(key, {}), f"{where}.{key}")
            for key, section in {**SECTIONS, "output": OutputConfig}.items()
        }
        method = dict(values.get("method", {}))
        name = method.pop("name", "full")
        options = component(tuning, name, "method").Options
        reg = dict(values.get("regularizer", {}))
        reg_name = reg.pop("name", "none")
        lam = _lam(reg.pop("lam", None), f"{where}.regularizer.lam")
        reg_options = component(regularizers, reg_name, "regularizer").Options
        with _naming(f"--method {name}"):
            method_options = from_mapping(options, method, f"{where}.method")
        with _naming(f"--reg {reg_name}"):
            reg_options = from_mapping(reg_options, reg, f"{where}.regularizer")
        sections["budget"] = _default_budget(sections["budget"], reg_name, lam, reg_options)
        return cls(
            **sections,
            method=MethodConfig(name, method_options),
            regularizer=RegularizerConfig(reg_name, lam, reg_options),
        )


def _lam(value: Any, where: str) -> float | None:
    """λ as a float (a number, or text such as ``1e-3`` that YAML leaves a string), or None."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {value!r} is not a number") from None


def _default_budget(
    budget: BudgetConfig, reg_name: str, lam: float | None, options: Section
) -> BudgetConfig:
    """``budget``, or the regularizer's default similarity budget when neither ``--lam`` nor
    a budget was given (``--reg rift`` alone keeps a similarity of 0.8: docs/strength.md,
    "Defaults")."""
    if lam is not None or budget.active:
        return budget
    similarity = component(regularizers, reg_name, "regularizer").default_budget_similarity(options)
    if similarity is None:
        return budget
    return dataclasses.replace(budget, target_similarity=similarity)


@contextlib.contextmanager
def _naming(label: str):
    """Prefix a component's option errors with the component (``--reg rift: ...``)."""
    try:
        yield
    except UserError as error:
        if str(error).startswith(label):
            raise
        raise UserError(f"{label}: {error}") from None


# ----------------------------------------------------------------------------- files
def write_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (UTF-8, or UTF-16 with its byte-order mark).

    Raises:
        UserError: the file cannot be read, is not text or not YAML, or nests too deep.
    """
    try:
        return yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, RecursionError) as error:  # RecursionError: nesting too deep
        raise UserError(f"{path} is not valid YAML ({error.__class__.__name__})") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror})") from None


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``; UserError if missing, unreadable or not a mapping."""
    if not path.is_file():
        raise UserError(f"{path} not found; is {path.parent} a riftune run folder?")
    values = load_yaml(path)
    if not isinstance(values, dict):
        raise UserError(f"{path} does not hold a riftune configuration")
    return values


def read_config(path: Path) -> RunConfig:
    """The configuration of a run folder's config.yaml (either form); an option it predates
    takes the value its run used (:func:`~riftune.config.legacy.with_predated_options`), not
    today's default."""
    values = with_predated_options(nested_form(read_yaml(path), str(path)))
    return RunConfig.from_dict(values, where=str(path))


def load_run_config(config: RunConfig | dict | str | Path) -> RunConfig:
    """A :class:`RunConfig` from itself, its nested (or flat) dict form, or a YAML file path."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, str | Path):
        return RunConfig.from_dict(read_yaml(Path(config)), where=str(config))
    return RunConfig.from_dict(config)
