"""The recipe a study tunes: the shared finetune flags, checked, and what follows from them.

The recipe is everything but what ``tune`` itself chooses (method, regularizer, strength) and
what each trial sets (its folder, fold and seed). From it come the estimate's rungs (folds or
seeds, by the size of the validation split) and, once a candidate is chosen, tuned.yaml.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from riftune.config import RunConfig, finetune_parser, run_config_from_args
from riftune.config.flags import given_flags
from riftune.data.folds import POOLED
from riftune.data.formats import SplitRequest, resolve
from riftune.errors import UserError
from riftune.strength.candidates import Candidate
from riftune.strength.config import TuneConfig
from riftune.strength.trials import Rungs

CHOSEN_BY_TUNE = {
    "method": "--methods",
    "reg": "--regularizers",
    "lam": "--ladder lam / --lams",
    "budget": "--ladder budget",
    "target_similarity": "--ladder budget / --budgets",
    "cv_folds": "--folds",
    "cv_fold": "--folds",
    "cv_seed": "--seed",
    "out": "tune's --out",
    "resume": "rerunning the same command",
    "overwrite": "another --out",
}
"""Finetune flags a study sets itself, and what the user gives instead."""


def check_recipe(flags: Sequence[str]) -> RunConfig:
    """The recipe's configuration (plain finetuning); UserError for a flag tune sets itself,
    one it does not know, or an evaluation the trials would skip (transfer)."""
    args, unknown = finetune_parser().parse_known_args(list(flags))
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)}")
    for dest in given_flags(args):
        if dest in CHOSEN_BY_TUNE:
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"tune sets {flag} itself; use {CHOSEN_BY_TUNE[dest]}")
    config = run_config_from_args(args)
    if config.method.name != "full" or config.regularizer.name != "none":
        raise UserError("a --config of tune must finetune plainly; name methods with --methods")
    if config.evaluation.transfer_data:
        raise UserError(
            "--transfer-data is not measured while tuning; pass it to the finetune of tuned.yaml"
        )
    return config


def validation_size(config: RunConfig) -> int:
    """Images in the recipe's validation split, counted through the data-format registry
    reading train and val alone (their labels checked together; a table's images never
    decoded, the test split never read)."""
    data = config.data
    labels = data.label_columns.split(",") if data.label_columns else None
    request = SplitRequest(data.data_root, True, data.group_column, labels, POOLED)
    return len(resolve(data.data).splits(request).labels["val"])


def rungs_for(settings: TuneConfig, config: RunConfig, val_images: int) -> Rungs:
    """Folds of train + val when the validation split is small, seeds on it otherwise."""
    mode = "folds" if val_images < settings.cv_below else "seeds"
    return Rungs(mode, settings.folds, config.training.seed)


def tuned_config(flags: Sequence[str], candidate: Candidate) -> dict:
    """The chosen candidate on the recipe, in ``finetune --config`` form."""
    args = finetune_parser().parse_args([*flags, *candidate.flags])
    return run_config_from_args(args).to_dict()


def write_tuned(path: Path, flags: Sequence[str], candidate: Candidate) -> None:
    """tuned.yaml: train it with ``riftune finetune --config PATH --out RUN [--seed S]``."""
    header = (
        f"# riftune tune chose {candidate.name}; train it with\n"
        f"#   riftune finetune --config {path.name} --out RUN --seed S\n"
    )
    path.write_text(header + yaml.safe_dump(tuned_config(flags, candidate), sort_keys=False))
