"""The trials of a study: one ``riftune finetune`` run folder per candidate and fold (or seed).

A candidate's rung i is fold i of the study's k folds of train + val (``--cv-folds k
--cv-fold i --cv-seed SEED``: the test split is never read), or, when the validation split is
large, seed SEED + i on the fixed validation split. Its run folder is
``DIR/trials/<candidate>/fold<i>`` (``seed<S>``), launched through the launchers ``compare``
uses, so a finished trial is skipped and an interrupted one resumes. A trial's result is its
metrics.json's ``val.auc`` and ``val.cka`` (CKA to the pretrained model on the fold).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from riftune.runs.launchers import GridJob
from riftune.strength.candidates import Candidate

OFF_IN_TRIALS = (
    "--landscape-images", "0", "--hessian-iters", "0", "--bootstrap-resamples", "0",
    "--no-robustness",
)  # fmt: skip
"""What no trial needs: sharpness, the Hessian, confidence intervals, corrupted images."""


@dataclass(frozen=True)
class Rungs:
    """How a study estimates: ``count`` folds of train + val, or ``count`` seeds on val.

    Attributes:
        mode: ``folds`` or ``seeds``.
        count: Folds (or seeds) per candidate.
        seed: The recipe's seed: the folds' seed and every fold run's training seed (the
            first seed in ``seeds`` mode).
    """

    mode: Literal["folds", "seeds"]
    count: int
    seed: int

    def name(self, rung: int) -> str:
        """The folder of rung ``rung``: ``fold<i>`` or ``seed<S>``."""
        return f"fold{rung}" if self.mode == "folds" else f"seed{self.seed + rung}"

    def flags(self, rung: int) -> tuple[str, ...]:
        if self.mode == "seeds":
            return ("--seed", str(self.seed + rung), "--no-test-split")
        return (
            "--cv-folds", str(self.count), "--cv-fold", str(rung), "--cv-seed", str(self.seed),
            "--seed", str(self.seed),
        )  # fmt: skip


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial contributes: validation AUC and CKA (to the pretrained model, on
    the fold) and the run's wall time in seconds."""

    auc: float
    cka: float
    wall_seconds: float


def trial_folder(out: Path, candidate: Candidate, rungs: Rungs, rung: int) -> Path:
    return out / "trials" / candidate.name / rungs.name(rung)


def job(out: Path, candidate: Candidate, rungs: Rungs, rung: int, recipe: Sequence[str]) -> GridJob:
    """The finetune command of one trial: the recipe's flags, then what trials switch off,
    then the candidate's and the rung's."""
    folder = trial_folder(out, candidate, rungs, rung)
    argv = (
        sys.executable, "-m", "riftune", "finetune", *recipe, *OFF_IN_TRIALS,
        *candidate.trial_flags, *rungs.flags(rung), "--out", str(folder), "--quiet",
    )  # fmt: skip
    return GridJob(tuple(argv), folder)


def result(folder: Path) -> TrialResult | None:
    """The trial's result, or None while it is unfinished (no metrics.json)."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return TrialResult(
        float(metrics["val"]["auc"]), float(metrics["val"]["cka"]), float(metrics["wall_seconds"])
    )
