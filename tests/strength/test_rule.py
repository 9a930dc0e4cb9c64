"""The rule of riftune tune on hand-computed inputs."""

import math

import pytest

from riftune.strength.rule import CandidateScores, choose

PLAIN = CandidateScores("plain", auc=(0.80, 0.80, 0.80, 0.80), cka=(0.6, 0.6, 0.6, 0.6))


def scores(name, diffs, cka):
    """A candidate whose AUC differs from plain's by ``diffs``, fold by fold."""
    return CandidateScores(
        name, tuple(p + d for p, d in zip(PLAIN.auc, diffs, strict=False)), (cka,) * len(diffs)
    )


def by_name(choice):
    return {e.name: e for e in choice.estimates}


def test_a_mean_within_tolerance_with_a_large_paired_error_does_not_qualify():
    # d = ±0.04: mean 0, sd = sqrt(4·0.0016/3) = 0.0461880, se = 0.0230940,
    # bound = 0 − 1.645·0.0230940 = −0.0379896 < −0.005
    noisy = scores("noisy", (0.04, -0.04, 0.04, -0.04), cka=0.9)
    # d = −0.002, −0.003, ...: mean −0.0025, sd = sqrt(4·0.0005²/3) = 0.000577350,
    # se = 0.000288675, bound = −0.0025 − 1.645·0.000288675 = −0.00297487 ≥ −0.005
    steady = scores("steady", (-0.002, -0.003, -0.002, -0.003), cka=0.8)
    choice = choose(PLAIN, [noisy, steady])
    est = by_name(choice)
    assert est["noisy"].diff_mean == pytest.approx(0.0, abs=1e-12)
    assert est["noisy"].diff_se == pytest.approx(0.0230940, abs=1e-7)
    assert est["noisy"].lower_bound == pytest.approx(-0.0379896, abs=1e-7)
    assert not est["noisy"].qualifies
    assert est["steady"].diff_mean == pytest.approx(-0.0025, abs=1e-12)
    assert est["steady"].diff_se == pytest.approx(0.000288675, abs=1e-9)
    assert est["steady"].lower_bound == pytest.approx(-0.00297487, abs=1e-8)
    assert est["steady"].qualifies
    assert est["steady"].drift == pytest.approx(0.2)
    assert est["steady"].mean_auc == pytest.approx(0.7975)
    assert choice.chosen == "steady"  # noisy drifts less (0.1) but is not shown non-inferior
    assert "steady" in choice.explanation and "0.200" in choice.explanation


def test_the_tolerance_and_z_set_the_bound():
    steady = scores("steady", (-0.002, -0.003, -0.002, -0.003), cka=0.8)
    assert choose(PLAIN, [steady], tolerance=0.0029).chosen == "plain"  # −0.00297 < −0.0029
    assert choose(PLAIN, [steady], tolerance=0.0029, z=1.0).chosen == "steady"  # −0.00279


def test_pruned_candidates_do_not_qualify_however_good():
    pruned = scores("pruned", (0.05, 0.05), cka=0.95)
    choice = choose(PLAIN, [pruned])
    est = by_name(choice)["pruned"]
    assert (est.n, est.qualifies) == (2, False)
    assert est.reason == "pruned after 2 of 4 folds"
    assert est.mean_auc == pytest.approx(0.85)
    assert choice.chosen == "plain"
    # judged on the folds it has when the caller asks for only two
    assert choose(PLAIN, [pruned], min_folds=2).chosen == "pruned"


def test_one_fold_gives_no_bound():
    plain = CandidateScores("plain", auc=(0.8,), cka=(0.5,))
    one = CandidateScores("one", auc=(0.9,), cka=(0.9,))
    choice = choose(plain, [one])
    assert choice.chosen == "plain"
    assert math.isnan(by_name(choice)["one"].diff_se)
    assert "no candidate was evaluated on two or more folds" in choice.explanation


def test_equal_drift_goes_to_the_higher_bound_then_to_the_earlier():
    same = scores("same", (0.0, 0.0, 0.0, 0.0), cka=0.7)  # bound 0
    lower = scores("lower", (-0.001, -0.001, -0.001, -0.001), cka=0.7)  # bound −0.001
    assert choose(PLAIN, [lower, same]).chosen == "same"
    twin = scores("twin", (0.0, 0.0, 0.0, 0.0), cka=0.7)
    assert choose(PLAIN, [same, twin]).chosen == "same"
    assert choose(PLAIN, [twin, same]).chosen == "twin"
    # plain itself wins a tie with a candidate that keeps exactly as much
    as_plain = scores("as_plain", (0.0, 0.0, 0.0, 0.0), cka=0.6)
    assert choose(PLAIN, [as_plain]).chosen == "plain"


def test_none_qualifies_gives_plain_and_says_by_how_much_the_best_missed():
    # d = −0.01, −0.02, ...: mean −0.015, se = 0.00288675, bound = −0.0197487,
    # 0.0147487 short of −0.005
    close = scores("close", (-0.01, -0.02, -0.01, -0.02), cka=0.8)
    far = scores("far", (-0.10, -0.10, -0.12, -0.12), cka=0.9)
    choice = choose(PLAIN, [far, close])
    assert choice.chosen == "plain"
    assert by_name(choice)["close"].lower_bound == pytest.approx(-0.0197487, abs=1e-7)
    assert "nothing qualified" in choice.explanation
    assert "close" in choice.explanation and "0.0147 short" in choice.explanation
    assert by_name(choice)["plain"].qualifies
    assert [e.name for e in choice.estimates] == ["plain", "far", "close"]


def test_qualifying_candidates_that_drift_more_than_plain_leave_plain():
    drifting = scores("drifting", (0.01, 0.01, 0.01, 0.01), cka=0.5)
    choice = choose(PLAIN, [drifting])
    assert by_name(choice)["drifting"].qualifies
    assert choice.chosen == "plain"
    assert "none drifts less" in choice.explanation


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError, match="folds"):
        choose(PLAIN, [CandidateScores("long", (0.8,) * 5, (0.6,) * 5)])
    with pytest.raises(ValueError, match="CKAs"):
        choose(PLAIN, [CandidateScores("odd", (0.8,) * 4, (0.6,) * 3)])
    with pytest.raises(ValueError, match="repeat"):
        choose(PLAIN, [scores("plain", (0.0,) * 4, 0.7)])


def test_standard_errors_of_the_means_and_the_rule_parameters():
    # AUC 0.81, 0.79, 0.81, 0.79: sd = sqrt(4·0.01²/3) = 0.0115470, se = 0.00577350;
    # CKA 0.7, 0.8, 0.7, 0.8: se = 0.0288675 (of the drift too)
    plain = CandidateScores("plain", (0.81, 0.79, 0.81, 0.79), (0.7, 0.8, 0.7, 0.8))
    choice = choose(plain, [], tolerance=0.01, z=2.0)
    est = choice.estimates[0]
    assert est.auc_se == pytest.approx(0.00577350, abs=1e-8)
    assert est.drift_se == pytest.approx(0.0288675, abs=1e-7)
    assert est.drift == pytest.approx(0.25)
    assert (est.diff_mean, est.diff_se, est.lower_bound) == (0.0, 0.0, 0.0)
    assert (choice.chosen, choice.tolerance, choice.z) == ("plain", 0.01, 2.0)
