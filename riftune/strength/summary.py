"""From a study's outcome to what the rule, the report and the study folder need.

- :func:`scores`: each candidate's per-fold AUC and CKA for :func:`riftune.strength.rule.choose`;
- :func:`context`: the report's data, search, estimate, tolerance and cost;
- :func:`check_same_study` / :func:`write_state`: DIR/study.yaml (what the study searches, so a
  rerun with other settings is refused rather than mixed in) and DIR/tune.json (its outcome).

Cost is counted in single-run equivalents: the seconds of every trial run added up, divided by
the mean seconds of one plain finetuning run of the same recipe (plain's own trials; a fold
trains on (k − 1)/k of train + val, about the training split's size).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from riftune.config import RunConfig
from riftune.errors import UserError
from riftune.strength.config import TuneConfig
from riftune.strength.rule import CandidateScores, Choice
from riftune.strength.study import Outcome
from riftune.strength.trials import Rungs

NOT_PART_OF_THE_STUDY = ("out", "jobs", "launcher", "slurm", "quiet")
"""Settings that change where and how fast the study runs, not what it finds."""


def scores(outcome: Outcome) -> tuple[CandidateScores, list[CandidateScores]]:
    """(plain's scores, every other candidate's), per fold in fold order."""
    table = {
        name: CandidateScores(name, tuple(r.auc for r in rs), tuple(r.cka for r in rs))
        for name, rs in outcome.results.items()
    }
    plain = table.pop("plain")
    return plain, list(table.values())


def study_settings(settings: TuneConfig) -> dict:
    values = dataclasses.asdict(settings)
    values = {k: v for k, v in values.items() if k not in NOT_PART_OF_THE_STUDY}
    return json.loads(json.dumps(values))  # tuples as lists, as YAML reads them back


def check_same_study(out: Path, settings: TuneConfig) -> None:
    """Write DIR/study.yaml on the first run; refuse a rerun with other study settings."""
    path = out / "study.yaml"
    mine = study_settings(settings)
    if not path.is_file():
        path.write_text(yaml.safe_dump(mine, sort_keys=False))
        return
    theirs = yaml.safe_load(path.read_text())
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if changed:
        raise UserError(
            f"{out} holds a study with other settings ({', '.join(changed)}; see "
            f"{path.name}); rerun it as it was, or tune into another --out"
        )


def context(settings: TuneConfig, config: RunConfig, rungs: Rungs, outcome: Outcome) -> dict:
    """What report.md states beside the table."""
    plain = outcome.results["plain"]
    unit = sum(r.wall_seconds for r in plain) / len(plain)
    total = sum(r.wall_seconds for rs in outcome.results.values() for r in rs)
    estimate = (
        f"{rungs.count}-fold cross-validation over train + val (folds drawn with seed "
        f"{rungs.seed}; the test split is never read)"
        if rungs.mode == "folds"
        else f"{rungs.count} seeds from {rungs.seed} on the validation split"
    )
    anchors = ", ".join(f"{m}: s = {s:.3f}" for m, s in outcome.anchors.items())
    return {
        "data": config.data.data
        + (f" ({config.data.shots} per class)" if config.data.shots else ""),
        "methods": ", ".join(settings.methods),
        "regularizers": ", ".join(settings.regularizers) + f" ({settings.ladder} ladder)",
        "estimate": estimate,
        "tolerance": f"{settings.tolerance:g} AUC points, z = {settings.z:g}",
        "anchor": f"paired RIFT similarity of each method alone ({anchors})",
        "wall time": f"{outcome.wall_seconds:.0f} s",
        "candidates": f"{len(outcome.results)}, of which {len(outcome.pruned)} pruned"
        + (f" and {len(outcome.failed)} failed" if outcome.failed else ""),
        "trial runs": outcome.trial_runs,
        "single-run equivalents": f"{total / unit:.1f} ({total:.0f} s in all trial runs, "
        f"{unit:.0f} s in one plain run of the recipe)",
    }


def write_state(out: Path, settings: TuneConfig, outcome: Outcome, choice: Choice) -> None:
    """DIR/tune.json: the chosen candidate, each candidate's per-fold results and the cost."""
    state = {
        "chosen": choice.chosen,
        "chosen_flags": list(next(c for c in outcome.candidates if c.name == choice.chosen).flags),
        "explanation": choice.explanation,
        "anchors": outcome.anchors,
        "pruned": sorted(outcome.pruned),
        "failed": outcome.failed,
        "wall_seconds": outcome.wall_seconds,
        "trial_seconds": sum(r.wall_seconds for rs in outcome.results.values() for r in rs),
        "candidates": {
            name: [dataclasses.asdict(r) for r in results]
            for name, results in outcome.results.items()
        },
        "estimates": [dataclasses.asdict(e) for e in choice.estimates],
        "settings": study_settings(settings),
    }
    (out / "tune.json").write_text(json.dumps(state, indent=1))
