"""The study: plain first, folds as rungs, pruning by Optuna's ThresholdPruner, resuming from
the journal and the run folders, failed runs tried again, the SLURM path through submitit.

The study's logic runs against a stand-in launcher that writes the files a finished trial
writes (metrics.json, history.csv) with AUCs chosen here, so every pruning decision and every
reported value is worked by hand; the SLURM path runs real tiny finetunes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest

from riftune.commands.tune import run_tune
from riftune.errors import UserError
from riftune.runs.launchers import JobResult, LaunchOutcome
from riftune.strength.config import TuneConfig, flags_of
from riftune.strength.recipe import check_recipe
from riftune.strength.study import JOURNAL, STUDY_NAME, Study
from riftune.strength.summary import check_same_study
from riftune.strength.trials import Rungs

# plain keeps s = 1 - 0.4/2 = 0.8, so budgets (0.5, 0.25) of its drift are S = 0.9 and 0.95
AUC = {
    "plain": [0.80, 0.82, 0.78],
    "rift[budget=0.9]": [0.801, 0.818, 0.781],  # within a point: runs every fold
    "rift[budget=0.95]": [0.77, 0.80, 0.80],  # -3 points on fold 0 < -(0.5 + 1.5): pruned
}

PENALTY = {"lora": 0.2}  # LoRA alone keeps s = 0.9: its own budgets are 0.95 and 0.975


class FakeLauncher:
    """Finishes each job by writing its run's files; ``fail`` names folders left unfinished."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[list[str]] = []
        self.fail = fail

    def run(self, jobs, log) -> LaunchOutcome:
        self.calls.append([f"{j.folder.parent.name}/{j.folder.name}" for j in jobs])
        for job in jobs:
            name, fold = job.folder.parent.name, int(job.folder.name.removeprefix("fold"))
            job.folder.mkdir(parents=True, exist_ok=True)
            if f"{name}/fold{fold}" in self.fail:
                continue
            auc = AUC.get(name, AUC["plain"])[fold]
            metrics = {"val": {"auc": auc, "cka": 0.5}, "wall_seconds": 10.0}
            (job.folder / "metrics.json").write_text(json.dumps(metrics))
            penalty = PENALTY.get(name, 0.4)
            with open(job.folder / "history.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([["epoch", "train_reg_loss"], [1, penalty]])
        return LaunchOutcome([JobResult(j, "done", 0) for j in jobs])


def _study(tmp_path: Path, launcher) -> Study:
    settings = TuneConfig(out=str(tmp_path), budgets=(0.5, 0.25), folds=3)
    return Study(settings, Rungs("folds", 3, 0), ("--data", "breastmnist"), launcher, print)


def _journal(tmp_path: Path) -> dict[str, optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL))
    )
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    return {t.user_attrs["candidate"]: t for t in study.get_trials()}


def _states(tmp_path: Path) -> dict[str, list[str]]:
    """Each candidate's trials' states, in the order they were made."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL))
    )
    states: dict[str, list[str]] = {}
    for trial in optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials():
        states.setdefault(trial.user_attrs["candidate"], []).append(trial.state.name)
    return states


def test_plain_first_then_folds_as_rungs_with_hopeless_candidates_pruned(tmp_path):
    launcher = FakeLauncher()
    outcome = _study(tmp_path, launcher).run()
    assert launcher.calls == [
        ["plain/fold0", "plain/fold1", "plain/fold2"],
        ["rift[budget=0.9]/fold0", "rift[budget=0.95]/fold0"],
        ["rift[budget=0.9]/fold1"],
        ["rift[budget=0.9]/fold2"],
    ]
    assert outcome.anchors == {"full": pytest.approx(0.8)}
    assert outcome.pruned == {"rift[budget=0.95]"} and outcome.failed == []
    assert [r.auc for r in outcome.results["rift[budget=0.9]"]] == AUC["rift[budget=0.9]"]
    assert [r.auc for r in outcome.results["rift[budget=0.95]"]] == [0.77]
    trials = _journal(tmp_path)
    states = {name: t.state.name for name, t in trials.items()}
    assert states == {"plain": "COMPLETE", "rift[budget=0.9]": "COMPLETE",
                      "rift[budget=0.95]": "PRUNED"}  # fmt: skip
    # reported: the mean paired difference over the folds so far
    steps = trials["rift[budget=0.9]"].intermediate_values
    assert steps[0] == pytest.approx(0.001)
    assert steps[1] == pytest.approx((0.001 - 0.002) / 2)
    assert steps[2] == pytest.approx((0.001 - 0.002 + 0.001) / 3)
    assert trials["rift[budget=0.9]"].value == pytest.approx(0.0)
    assert trials["rift[budget=0.95]"].intermediate_values == {0: pytest.approx(-0.03)}


def test_each_method_runs_alone_first_and_anchors_its_own_ladder(tmp_path):
    settings = TuneConfig(out=str(tmp_path), methods=("full", "lora"), budgets=(0.5, 0.25))
    launcher = FakeLauncher()
    outcome = Study(settings, Rungs("folds", 3, 0), (), launcher, print).run()
    assert launcher.calls[0] == [f"{m}/fold{i}" for m in ("plain", "lora") for i in range(3)]
    assert outcome.anchors == {"full": pytest.approx(0.8), "lora": pytest.approx(0.9)}
    assert launcher.calls[1] == [
        "rift[budget=0.9]/fold0",
        "rift[budget=0.95]/fold0",
        "lora+rift[budget=0.95]/fold0",
        "lora+rift[budget=0.975]/fold0",
    ]
    assert "lora" in outcome.results and "lora" not in outcome.pruned


def test_a_rerun_reads_the_journal_and_runs_nothing_again(tmp_path):
    _study(tmp_path, FakeLauncher()).run()
    again = FakeLauncher()
    outcome = _study(tmp_path, again).run()
    assert again.calls == []
    assert outcome.pruned == {"rift[budget=0.95]"}
    assert len(_journal(tmp_path)) == 3  # no new trials


def test_a_failed_run_fails_its_trial_and_is_tried_again_on_the_next_run(tmp_path):
    outcome = _study(tmp_path, FakeLauncher(fail=("rift[budget=0.9]/fold1",))).run()
    assert outcome.failed == ["rift[budget=0.9]"]
    assert [r.auc for r in outcome.results["rift[budget=0.9]"]] == [0.801]
    again = FakeLauncher()
    outcome = _study(tmp_path, again).run()
    assert again.calls == [["rift[budget=0.9]/fold1"], ["rift[budget=0.9]/fold2"]]
    assert outcome.failed == [] and len(outcome.results["rift[budget=0.9]"]) == 3
    assert _states(tmp_path)["rift[budget=0.9]"] == ["FAIL", "COMPLETE"]


def test_a_study_killed_mid_rung_continues_with_new_trials(tmp_path):
    class Killed(FakeLauncher):
        def run(self, jobs, log):
            outcome = super().run(jobs, log)
            if len(self.calls) == 2:  # the ladder's fold 0 ran; nothing was reported
                raise SystemExit("killed")
            return outcome

    with pytest.raises(SystemExit):
        _study(tmp_path, Killed()).run()
    again = FakeLauncher()
    outcome = _study(tmp_path, again).run()
    assert again.calls == [["rift[budget=0.9]/fold1"], ["rift[budget=0.9]/fold2"]]
    assert outcome.pruned == {"rift[budget=0.95]"} and outcome.failed == []
    assert _states(tmp_path) == {
        "plain": ["COMPLETE"],
        "rift[budget=0.9]": ["FAIL", "COMPLETE"],  # left running: replaced
        "rift[budget=0.95]": ["FAIL", "PRUNED"],
    }


def test_a_rerun_with_other_study_settings_is_refused(tmp_path):
    check_same_study(tmp_path, TuneConfig(out=str(tmp_path), folds=3, jobs=1))
    check_same_study(tmp_path, TuneConfig(out=str(tmp_path), folds=3, jobs=4))  # speed only
    with pytest.raises(UserError, match="other settings \\(folds, tolerance"):
        check_same_study(tmp_path, TuneConfig(out=str(tmp_path), folds=5, tolerance=1.0))


def test_settings_from_a_mapping():
    settings = TuneConfig.from_mapping(
        {
            "out": "x",
            "finetune": {"data": "breastmnist", "img_size": 28, "augment": False},
            "methods": "full,lora",
            "budgets": [0.5],
            "lams": None,
        }
    )
    assert settings.finetune == ("--data", "breastmnist", "--img-size", "28", "--no-augment")
    assert settings.methods == ("full", "lora") and settings.budgets == (0.5,)
    assert flags_of(["--epochs", "1"]) == ("--epochs", "1")
    for values, message in (
        ({"out": "x", "folds": 1}, "at least 2"),
        ({"out": "x", "bogus": 1}, "unknown settings"),
        ({"folds": 3}, "give out"),
        ({"out": "x", "slurm": {"partition": "gpu"}}, "need --launcher slurm"),
    ):
        with pytest.raises(UserError, match=message):
            TuneConfig.from_mapping(values)


def test_the_recipe_leaves_to_tune_what_tune_chooses():
    assert check_recipe(["--data", "breastmnist", "--epochs", "1"]).training.epochs == 1
    for flags, message in (
        (["--reg", "rift"], "tune sets --reg itself"),
        (["--lam", "1"], "tune sets --lam itself"),
        (["--cv-folds", "3"], "use --folds"),
        (["--transfer-data", "pneumoniamnist"], "not measured while tuning"),
        (["--bogus"], "unrecognized"),
    ):
        with pytest.raises(UserError, match=message):
            check_recipe(flags)


@pytest.mark.slow
def test_the_slurm_path_through_submitits_local_executor(tmp_path, medmnist_dir, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    settings = TuneConfig(
        out=str(tmp_path / "study"),
        finetune=(
            "--data",
            "breastmnist",
            "--shots",
            "10",
            "--img-size",
            "28",
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ),
        budgets=(0.5,),
        folds=2,
        prune_margin=100.0,
        launcher="slurm",
        slurm={"gpus_per_job": 0, "cpus_per_task": 1},
        quiet=True,
    )
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    run_tune(settings, executor=executor)
    state = json.loads((tmp_path / "study" / "tune.json").read_text())
    plain, rift = state["candidates"]
    assert plain == "plain" and rift.startswith("rift[budget=0.")
    assert all(len(folds) == 2 for folds in state["candidates"].values())
    runs = sorted((tmp_path / "study" / "trials").glob("*/fold*/metrics.json"))
    assert len(runs) == 4 and not any("test" in json.loads(p.read_text()) for p in runs)
    assert len(list((tmp_path / "submitit").rglob("*_submitted.pkl"))) == 4  # through submitit


def test_seed_trials_leave_the_test_split_unread():
    """Seeds on a large validation split: each trial trains on train, validates on val and
    never reads test (--no-test-split), as a fold trial never does (--cv-folds)."""
    assert Rungs("seeds", 3, 5).flags(1) == ("--seed", "6", "--no-test-split")
    assert "--cv-folds" in Rungs("folds", 3, 0).flags(1)
