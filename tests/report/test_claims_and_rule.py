"""The paper's claims against plain finetuning, the defaults rule, and the Pareto figure, on
groups built from run records (aggregate_runs) with hand-computed expectations."""

from __future__ import annotations

import math

from riftune.report import aggregate_runs, pareto_front, plot_pareto
from riftune.report.claims import claims_table, published_line
from riftune.report.default_rule import AUC_TOLERANCE, default_rule_markdown, rift_candidates

from .test_tables_and_figures import assert_real_png, parse_table


def _record(dataset, reg, seed, variant=None, lam=None, **metrics):
    return {"dataset": dataset, "method": "full", "reg": reg, "variant": variant, "lam": lam,
            "seed": seed, **metrics}  # fmt: skip


def test_claims_marks_each_claim_against_none():
    runs = [
        _record("d", "none", 0, **{"test.cka": 0.40, "test.sharpness": 1.0, "test.acc": 0.80}),
        # CKA +50% (holds), drift 0.6 -> 0.4 (-33%), sharpness -50% (holds), acc -0.5 points
        _record("d", "rift", 0, "paired", 1.0,
                **{"test.cka": 0.60, "test.sharpness": 0.5, "test.acc": 0.795}),
        # CKA +10% (short), sharpness -10% (short), acc -3 points (fails)
        _record("d", "l2sp", 0, None, 0.1,
                **{"test.cka": 0.44, "test.sharpness": 0.9, "test.acc": 0.77}),
    ]  # fmt: skip
    text = claims_table(aggregate_runs(runs))
    headers, rows = parse_table(text, "Against `none`")
    by_reg = {row[0]: dict(zip(headers, row, strict=True)) for row in rows}
    rift, l2sp = by_reg["rift (paired)"], by_reg["l2sp"]
    assert rift["CKA change (≥ +30%)"] == "+50% ✓" and rift["Drift 1 − CKA"] == "0.400"
    assert rift["Drift change"] == "-33%" and rift["Sharpness change (≈ −42%)"] == "-50% ✓"
    assert rift["Acc Δ points (≥ −1)"] == "-0.5 ✓"
    assert l2sp["CKA change (≥ +30%)"] == "+10% ~" and l2sp["Sharpness change (≈ −42%)"] == "-10% ~"
    assert l2sp["Acc Δ points (≥ −1)"] == "-3.0 ✗"
    assert claims_table(aggregate_runs(runs[1:])) == ""  # no plain run to compare with


def test_published_row_only_for_datasets_medmnist_v2_lists():
    assert "AUC 0.901, accuracy 0.863" in published_line("breastmnist")
    assert published_line("breastmnist · 10 shots") == "" and published_line("x") == ""


def _rule_runs():
    """Two tables; plain val AUC 0.80 ± std over 3 seeds in both."""
    runs = []
    for table in ("a", "b"):
        for seed, auc in enumerate((0.79, 0.80, 0.81)):
            runs.append(_record(table, "none", seed, **{"val.auc": auc, "val.cka": 0.3}))
            # close to plain everywhere, CKA 0.6
            runs.append(_record(table, "rift", seed, "paired", 1.0,
                                **{"val.auc": auc - 0.002, "val.cka": 0.6}))  # fmt: skip
            # higher CKA but 2 points below plain in table b
            drop = 0.02 if table == "b" else 0.0
            runs.append(_record(table, "rift", seed, "paired", 10.0,
                                **{"val.auc": auc - drop, "val.cka": 0.9}))  # fmt: skip
    # a candidate missing from table b is no candidate
    runs.append(_record("a", "rift", 0, "covariance", 0.1, **{"val.auc": 0.9, "val.cka": 0.99}))
    return runs


def test_the_rule_picks_the_highest_cka_within_half_a_point_everywhere():
    candidates = rift_candidates(aggregate_runs(_rule_runs()))
    assert [(c.variant, c.lam, c.qualifies) for c in candidates] == [
        ("paired", 1.0, True), ("paired", 10.0, False)]  # fmt: skip
    delta, se = candidates[1].auc_deltas["b"]
    assert math.isclose(delta, -0.02) and delta < -AUC_TOLERANCE
    # both groups have std 0.01 over 3 seeds: se = sqrt(2 · 0.01² / 3)
    assert math.isclose(se, math.sqrt(2 * 0.01**2 / 3))
    text = default_rule_markdown(aggregate_runs(_rule_runs()))
    assert "The rule picks **rift (paired), λ = 1**" in text
    headers, rows = parse_table(text, "Cells:")
    assert headers == ["Candidate", "a", "b", "Mean val CKA", "Qualifies"]
    assert rows[1][2] == "-2.0 ± 0.8 / 0.900" and rows[1][-1] == "no"


def test_the_rule_says_when_nothing_qualifies():
    runs = [r for r in _rule_runs() if r["lam"] != 1.0]
    assert "No candidate stays within 0.5 point" in default_rule_markdown(aggregate_runs(runs))


def test_pareto_front_keeps_the_undominated_points():
    points = [(0.2, 0.9), (0.5, 0.8), (0.4, 0.7), (0.9, 0.6), (0.5, 0.8)]
    # (0.4, 0.7) is dominated by (0.5, 0.8); the two equal points do not dominate each other
    assert pareto_front(points) == [0, 1, 4, 3]


def test_pareto_figure_draws_one_panel_per_table(tmp_path):
    runs = [
        _record(t, reg, seed, **{"test.cka": cka + 0.01 * seed, "test.auc": auc})
        for t in ("a", "b", "c")
        for reg, cka, auc in (("none", 0.3, 0.85), ("rift", 0.6, 0.84), ("l2sp", 0.4, 0.80))
        for seed in range(2)
    ]
    plot_pareto(aggregate_runs(runs), tmp_path / "pareto.png")
    assert_real_png(tmp_path / "pareto.png")
