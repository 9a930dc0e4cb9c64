"""``riftune tune``: the strongest representation keeping that costs no accuracy, for one dataset.

Runs (or continues) the study of :mod:`riftune.strength.study` in ``--out DIR``, applies the rule
of :mod:`riftune.strength.rule` and writes DIR/tuned.yaml (the chosen configuration in ``finetune
--config`` form), DIR/report.md and DIR/tune.png (:mod:`riftune.strength.report`), beside the
trials (DIR/trials/) and the study's journal (DIR/study.journal). Unknown flags are the recipe
every trial shares (``--data``, ``--epochs``, ...), as with ``compare``.
"""

from __future__ import annotations

import argparse
import sys

from riftune.runs.folder import RunDir, run_lock
from riftune.runs.launchers import Launcher, LocalLauncher, add_launcher_arguments, slurm_launcher
from riftune.strength import recipe
from riftune.strength.candidates import check_components
from riftune.strength.config import DEFAULT_CV_BELOW, TuneConfig
from riftune.strength.ladder import DEFAULT_DRIFT_FRACTIONS


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the study folder (rerun to continue)")
    parser.add_argument(
        "--methods",
        default="full",
        help="comma-separated methods, full among them (e.g. full,lora)",
    )
    parser.add_argument(
        "--regularizers",
        default="rift",
        help="comma-separated regularizers laddered with each method (rift, cka, "
        "feature-distill, l2sp, delta, spd, ...)",
    )
    parser.add_argument(
        "--ladder",
        choices=("budget", "lam"),
        default="budget",
        help="budget: RIFT at similarity budgets anchored on plain finetuning's own drift "
        "(other regularizers at λ); lam: every regularizer at λ",
    )
    parser.add_argument(
        "--budgets",
        default=",".join(map(str, DEFAULT_DRIFT_FRACTIONS)),
        help="the budget rungs as fractions of plain finetuning's drift to keep",
    )
    parser.add_argument(
        "--lams", help="λ rungs (default: 0.1, 1 and 10 times each regularizer's default λ)"
    )
    parser.add_argument(
        "--folds", type=int, default=3, help="folds of train + val (or seeds) per candidate"
    )
    parser.add_argument(
        "--cv-below",
        type=int,
        default=DEFAULT_CV_BELOW,
        help="cross-validate over train + val when the validation split has fewer images; "
        "else repeat seeds on it",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="non-inferiority margin, AUC points"
    )
    parser.add_argument("--z", type=float, default=1.645, help="one-sided quantile of the rule")
    parser.add_argument(
        "--prune-margin",
        type=float,
        default=1.5,
        help="stop a candidate whose mean paired AUC difference falls below -(tolerance + "
        "this), in points",
    )
    add_launcher_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="only the final summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def make_launcher(settings: TuneConfig, executor=None) -> Launcher:
    """Local processes, or a SLURM array per rung through submitit (``executor``: tests)."""
    if settings.launcher == "local":
        return LocalLauncher(settings.jobs)
    return slurm_launcher(settings.slurm, settings.folder / "slurm", executor)


def run_tune(settings: TuneConfig, executor=None) -> str:
    """Run or continue the study of ``settings``; write tuned.yaml, report.md and tune.png;
    return report.md's text. One tune at a time per folder (its lock)."""
    from riftune.strength import summary
    from riftune.strength.report import write_report
    from riftune.strength.rule import choose
    from riftune.strength.study import Study

    out = settings.folder
    config = recipe.check_recipe(settings.finetune)
    check_components(settings.methods, settings.regularizers)
    val_images = recipe.validation_size(config)  # an unreadable --data: refused before mkdir
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(RunDir(out)):
        summary.check_same_study(out, settings)
        rungs = recipe.rungs_for(settings, config, val_images)
        log = (lambda m: None) if settings.quiet else (lambda m: print(m, file=sys.stderr))
        study = Study(settings, rungs, settings.finetune, make_launcher(settings, executor), log)
        outcome = study.run()
        choice = choose(
            *summary.scores(outcome),
            tolerance=settings.tolerance / 100.0,
            z=settings.z,
            min_folds=rungs.count,
        )
        chosen = next(c for c in outcome.candidates if c.name == choice.chosen)
        recipe.write_tuned(out / "tuned.yaml", settings.finetune, chosen)
        write_report(out, choice, summary.context(settings, config, rungs, outcome))
        summary.write_state(out, settings, outcome, choice)
        return (out / "report.md").read_text()
