"""The study: every candidate's trials, run rung by rung, kept in an Optuna journal.

Order: each method alone (plain finetuning first among them) on every fold, which gives the
reference of the rule and each method's own drift; then the ladders (:mod:`riftune.strength.ladder`)
with the folds as the rungs of a multi-fidelity search: fold 0 of every candidate, then fold 1
of those still in, and so on, each rung launched at once (``--jobs`` local processes or one
SLURM array).

One Optuna trial per candidate holds its state. After fold i the trial reports the mean
paired AUC difference to plain finetuning over folds 0..i, and Optuna's ``ThresholdPruner``
stops it when that is below −(tolerance + prune margin). A threshold, not successive halving
or a median pruner: those rank candidates against each other and stop the weaker half, but the
rule keeps the *least drifting* candidate that is non-inferior to plain, typically one of the
weaker-scoring, stronger rungs; what makes a candidate hopeless is its distance to plain's
AUC, not to its rivals'. The margin keeps one unlucky fold from stopping a candidate.

The journal (``DIR/study.journal``, Optuna's JournalStorage on a file, which processes on a
cluster's shared file system can append to at once) and the trial run folders together make
the study resumable: run the same command again and complete and pruned trials are read,
interrupted runs resume, and a trial left running (the study was killed) or whose run failed
is replaced by a new trial that re-reports the folds already finished and runs the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from riftune.errors import UserError
from riftune.runs.launchers import GridJob, Launcher
from riftune.strength import trials
from riftune.strength.candidates import Candidate, baseline, ladder
from riftune.strength.config import TuneConfig
from riftune.strength.ladder import anchor_similarity, last_epoch_penalty
from riftune.strength.trials import Rungs, TrialResult

JOURNAL = "study.journal"
STUDY_NAME = "riftune-tune"


class TuneStopped(Exception):
    """A signal stopped the study's runs; they checkpointed, and the same command continues."""

    def __init__(self, signal_name: str):
        super().__init__(f"tune stopped by {signal_name}; rerun the same command to continue")


@dataclass
class Outcome:
    """What the study found: each candidate's results by rung (a prefix of the rungs when it
    was pruned), the anchors, and the cost."""

    candidates: list[Candidate]
    results: dict[str, list[TrialResult]]
    pruned: set[str]
    anchors: dict[str, float]
    wall_seconds: float
    trial_runs: int = 0  # finished fold runs
    failed: list[str] = field(default_factory=list)


def open_study(out: Path, settings: TuneConfig) -> optuna.Study:
    """The study of ``out`` (created on the first run), pruning as the module says."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    lower = -(settings.tolerance + settings.prune_margin) / 100.0
    return optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=lower),
        load_if_exists=True,
    )


class Study:
    """Runs (or continues) the study of ``settings`` with ``recipe`` (the shared finetune flags).

    Args:
        settings: What to search.
        rungs: Folds or seeds.
        recipe: Finetune flags of every trial.
        launcher: Where the runs execute.
        log: Progress lines.
    """

    def __init__(
        self,
        settings: TuneConfig,
        rungs: Rungs,
        recipe: Sequence[str],
        launcher: Launcher,
        log: Callable[[str], None],
    ) -> None:
        self.settings, self.rungs, self.recipe = settings, rungs, tuple(recipe)
        self.launcher, self.log = launcher, log
        self.out = settings.folder
        self.study = open_study(self.out, settings)
        self.trials: dict[str, optuna.Trial] = {}  # this session's, by candidate
        self.states: dict[str, TrialState] = {}
        self.reported: dict[str, int] = {}  # folds this session's trial has reported

    # ----------------------------------------------------------------------------- trials
    def _open_trials(self, candidates: Sequence[Candidate]) -> None:
        """Each candidate's trial: a complete or pruned one is read from the journal; one left
        running by a study that was stopped is marked failed, and it (or a failed one, or
        none) is replaced by a new trial, which re-reports the folds already run."""
        latest = {t.user_attrs.get("candidate"): t for t in self.study.get_trials(deepcopy=False)}
        for candidate in candidates:
            found = latest.get(candidate.name)
            if found is not None and found.state in (TrialState.COMPLETE, TrialState.PRUNED):
                self.states[candidate.name] = found.state
                continue
            if found is not None and found.state == TrialState.RUNNING:
                self.study.tell(found.number, state=TrialState.FAIL)
            trial = self.study.ask()
            trial.set_user_attr("candidate", candidate.name)
            self.trials[candidate.name] = trial
            self.states[candidate.name] = TrialState.RUNNING
            self.reported[candidate.name] = 0

    def _tell(self, candidate: Candidate, value: float | None, state: TrialState) -> None:
        self.study.tell(self.trials[candidate.name], value, state=state)
        self.states[candidate.name] = state

    def _launch(self, candidates: Sequence[Candidate], rung_list: Sequence[int]) -> None:
        jobs: list[GridJob] = [
            trials.job(self.out, c, self.rungs, r, self.recipe)
            for c in candidates
            for r in rung_list
            if trials.result(trials.trial_folder(self.out, c, self.rungs, r)) is None
        ]
        if not jobs:
            return
        outcome = self.launcher.run(jobs, self.log)
        if outcome.stopped_by:
            raise TuneStopped(outcome.stopped_by)

    def _results(self, candidate: Candidate, upto: int) -> list[TrialResult | None]:
        return [
            trials.result(trials.trial_folder(self.out, candidate, self.rungs, r))
            for r in range(upto)
        ]

    def _catch_up(
        self, candidate: Candidate, rung: int, plain: Sequence[TrialResult], prunable: bool = True
    ) -> None:
        """Report the folds up to ``rung`` that this session's trial has not reported yet."""
        name = candidate.name
        while self.states[name] == TrialState.RUNNING and self.reported[name] <= rung:
            self._report(candidate, self.reported[name], plain, prunable)

    def _report(
        self, candidate: Candidate, rung: int, plain: Sequence[TrialResult], prunable: bool
    ) -> None:
        """Report the mean paired difference over folds 0..rung, then prune the trial when
        the pruner says so, complete it after the last fold, or fail it if its run failed."""
        results = self._results(candidate, rung + 1)
        if any(r is None for r in results):
            folder = trials.trial_folder(self.out, candidate, self.rungs, rung)
            self.log(f"{candidate.name}: the run in {folder} failed; see its compare.log")
            self._tell(candidate, None, TrialState.FAIL)
            return
        diffs = [r.auc - p.auc for r, p in zip(results, plain, strict=False) if r is not None]
        value = sum(diffs) / len(diffs)
        trial = self.trials[candidate.name]
        trial.report(value, rung)
        self.reported[candidate.name] = rung + 1
        if rung + 1 == self.rungs.count:
            self._tell(candidate, value, TrialState.COMPLETE)
        elif prunable and trial.should_prune():
            self.log(
                f"{candidate.name}: pruned after {rung + 1} folds (mean paired Δ {value:+.4f})"
            )
            self._tell(candidate, None, TrialState.PRUNED)

    # ------------------------------------------------------------------------------- run
    def run(self) -> Outcome:
        started = time.perf_counter()
        count = self.rungs.count
        methods = list(dict.fromkeys(["full", *self.settings.methods]))
        baselines = [baseline(m) for m in methods]
        self._open_trials(baselines)
        self._launch(baselines, range(count))
        plain_results = self._results(baselines[0], count)
        missing = [r for r, res in enumerate(plain_results) if res is None]
        if missing:
            folder = trials.trial_folder(self.out, baselines[0], self.rungs, missing[0])
            raise UserError(f"plain finetuning failed on {self.rungs.name(missing[0])}; see "
                            f"{folder / 'compare.log'}")  # fmt: skip
        plain = [r for r in plain_results if r is not None]
        anchors = {}
        for candidate in baselines:
            self._catch_up(candidate, count - 1, plain, prunable=False)
            folders = [
                trials.trial_folder(self.out, candidate, self.rungs, r) for r in range(count)
            ]
            if all(trials.result(f) for f in folders):
                anchors[candidate.method] = anchor_similarity(
                    [last_epoch_penalty(f) for f in folders]
                )
        ladders = [
            c
            for m in methods
            if m in anchors
            for reg in self.settings.regularizers
            for c in ladder(m, reg, anchors[m], use_budget=self.settings.ladder == "budget",
                            fractions=self.settings.budgets, lams=self.settings.lams)
        ]  # fmt: skip
        self._open_trials(ladders)
        for rung in range(count):
            live = [c for c in ladders if self.states[c.name] == TrialState.RUNNING]
            self._launch(live, [rung])
            for candidate in live:
                self._catch_up(candidate, rung, plain)
        return self._outcome(baselines + ladders, anchors, started)

    def _outcome(self, candidates: list[Candidate], anchors: dict, started: float) -> Outcome:
        results: dict[str, list[TrialResult]] = {}
        pruned: set[str] = set()
        failed: list[str] = []
        for candidate in candidates:
            state = self.states[candidate.name]
            done = self._results(candidate, self.rungs.count)
            results[candidate.name] = [r for r in done[: _prefix(done)] if r is not None]
            if state == TrialState.PRUNED:
                pruned.add(candidate.name)
            elif state != TrialState.COMPLETE:
                failed.append(candidate.name)
        wall = self.study.user_attrs.get("wall_seconds", 0.0) + time.perf_counter() - started
        self.study.set_user_attr("wall_seconds", wall)
        runs = sum(len(r) for r in results.values())
        return Outcome(candidates, results, pruned, anchors, wall, runs, failed)


def _prefix(results: Sequence[TrialResult | None]) -> int:
    """How many results lead before the first missing one."""
    for i, result in enumerate(results):
        if result is None:
            return i
    return len(results)
