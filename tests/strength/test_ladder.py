"""The ladder of strengths and the candidates: rungs worked by hand from plain's drift, names,
flags, and the anchor run that logs paired RIFT's penalty without changing training."""

from __future__ import annotations

import csv
import json

import pytest

from riftune.cli import main
from riftune.config import finetune_parser, run_config_from_args
from riftune.errors import UserError
from riftune.strength.candidates import Candidate, baseline, check_components, ladder
from riftune.strength.ladder import (
    anchor_similarity,
    budget_rungs,
    lam_rungs,
    last_epoch_penalty,
    similarity_of_penalty,
)


def test_budget_rungs_keep_fractions_of_plains_drift():
    # plain keeps s = 0.8, drift 0.2: keeping 3/4, 1/2, 1/4 of it means S = 0.85, 0.9, 0.95
    assert budget_rungs(0.8, (0.75, 0.5, 0.25)) == [0.85, 0.9, 0.95]
    # plain drifted less on a smaller set: the same fractions bind closer to 1
    assert budget_rungs(0.96, (0.75, 0.5, 0.25)) == [0.97, 0.98, 0.99]
    # rungs that round onto each other, onto 1 or onto plain's own similarity are dropped
    assert budget_rungs(0.9996, (0.75, 0.5)) == []
    assert budget_rungs(0.8, (0.5, 0.5001)) == [0.9]
    with pytest.raises(UserError, match="in \\(0, 1\\)"):
        budget_rungs(0.8, (1.0,))


def test_lam_rungs_are_multiples_of_the_default():
    assert lam_rungs(0.1) == [0.01, 0.1, 1.0]
    assert lam_rungs(1.0, (0.5, 2)) == [0.5, 2.0]
    with pytest.raises(UserError):
        lam_rungs(1.0, (0.0,))


def test_the_anchor_is_one_minus_half_the_mean_last_epoch_penalty(tmp_path):
    for name, penalties in (("a", [0.5, 0.3]), ("b", [0.6, 0.5])):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "history.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "train_reg_loss", "val_auc"])
            writer.writerows([[i + 1, p, 0.8] for i, p in enumerate(penalties)])
    last = [last_epoch_penalty(tmp_path / n) for n in ("a", "b")]
    assert last == [0.3, 0.5]
    assert anchor_similarity(last) == pytest.approx(1 - 0.4 / 2)
    assert similarity_of_penalty(0.0) == 1.0 and similarity_of_penalty(2.0) == 0.0
    with pytest.raises(UserError, match="not finished an epoch"):
        last_epoch_penalty(tmp_path / "missing")


def test_candidate_names_and_flags():
    plain, lora = baseline("full"), baseline("lora")
    assert (plain.name, lora.name) == ("plain", "lora")
    assert plain.flags == ("--method", "full", "--reg", "none")
    assert plain.trial_flags[-2:] == ("--lam", "0") and "paired" in plain.trial_flags
    rungs = ladder("lora", "rift", 0.8, use_budget=True, fractions=(0.5, 0.25), lams=None)
    assert [c.name for c in rungs] == ["lora+rift[budget=0.9]", "lora+rift[budget=0.95]"]
    assert rungs[0].trial_flags == rungs[0].flags
    args = finetune_parser().parse_args(list(rungs[0].flags))
    config = run_config_from_args(args)
    assert config.method.name == "lora" and config.regularizer.options.match == "paired"
    assert config.budget.target_similarity == 0.9 and config.epsilon == pytest.approx(0.2)
    # cka has no budget of plain's units here: λ, 0.1/1/10 times its default of 1
    cka = ladder("full", "cka", 0.8, use_budget=True, fractions=(0.5,), lams=None)
    assert [c.name for c in cka] == ["cka[lam=0.1]", "cka[lam=1]", "cka[lam=10]"]
    lams = ladder("full", "rift", 0.8, use_budget=False, fractions=(0.5,), lams=(0.3,))
    assert [c.name for c in lams] == ["rift[lam=0.3]"] and lams[0].flags[-2:] == ("--lam", "0.3")
    assert Candidate("full", "l2sp", "lam=1").name == "l2sp[lam=1]"


def test_components_are_checked():
    check_components(["full", "lora"], ["rift", "cka"])
    for methods, regs, message in (
        (["lora"], ["rift"], "must include full"),
        (["full", "linear"], ["rift"], "keeps the pretrained features"),
        (["full", "nope"], ["rift"], "choose from"),
        (["full"], ["none"], "choose from"),
    ):
        with pytest.raises(UserError, match=message):
            check_components(methods, regs)


@pytest.mark.slow
def test_the_anchor_run_trains_exactly_as_plain_finetuning(tmp_path, medmnist_dir, monkeypatch):
    """λ = 0: loss = task + 0·D, so every update is plain's; only train_reg_loss differs."""
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    recipe = ["--data", "breastmnist", "--shots", "10", "--epochs", "2", "--img-size", "28",
              "--batch-size", "8", "--cv-folds", "2", "--landscape-images", "0",
              "--bootstrap-resamples", "0", "--quiet"]  # fmt: skip
    plain, anchor = tmp_path / "plain", tmp_path / "anchor"
    assert main(["finetune", *recipe, "--out", str(plain)]) == 0
    assert main(["finetune", *recipe, *baseline("full").trial_flags, "--out", str(anchor)]) == 0
    rows = {}
    for run in (plain, anchor):
        with open(run / "history.csv", newline="") as handle:
            rows[run] = list(csv.DictReader(handle))
    for a, b in zip(rows[plain], rows[anchor], strict=True):
        penalty = b.pop("train_reg_loss")
        assert a.pop("train_reg_loss") == "0.0" and 0 < float(penalty) < 2
        assert a == b  # the same losses, validation AUC and CKA, to the last digit
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (plain, anchor)]
    assert metrics[0]["val"] == metrics[1]["val"]
