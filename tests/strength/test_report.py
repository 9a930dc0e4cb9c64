"""report.md and tune.png of a tuning study, from a choice on hand-computed inputs."""

import numpy as np
from PIL import Image

from riftune.strength.report import write_report
from riftune.strength.rule import CandidateScores, choose

PLAIN = CandidateScores("plain", (0.80, 0.82, 0.80, 0.82), (0.6, 0.6, 0.6, 0.6))


def cells(markdown: str, name: str) -> list[str]:
    """The cells of the table row whose first cell mentions ``name``."""
    for line in markdown.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and name in parts[0]:
            return parts
    raise AssertionError(f"no row for {name}")


def study_choice():
    # steady: d = −0.002, −0.003, ...: mean −0.0025, se 0.000288675, bound −0.00297487;
    # AUC 0.798, 0.817, 0.798, 0.817: mean 0.8075, sd = sqrt(4·0.0095²/3) = 0.0109697,
    # se = 0.00548483; CKA 0.8 → drift 0.2, se 0
    steady = CandidateScores("rift[budget=0.85]", (0.798, 0.817, 0.798, 0.817), (0.8,) * 4)
    pruned = CandidateScores("rift[budget=0.5]", (0.70,), (0.95,))
    noisy = CandidateScores("lora", (0.84, 0.78, 0.84, 0.78), (0.9, 0.9, 0.9, 0.9))
    return choose(PLAIN, [steady, pruned, noisy])


def test_the_report_tables_every_candidate_and_marks_the_choice(tmp_path):
    choice = study_choice()
    context = {
        "data": "breastmnist --shots 50",
        "folds": 4,
        "tolerance": "0.5 AUC points",
        "cost": {"wall seconds": 812.25, "trials run": 9, "pruned": 3},
    }
    written = write_report(tmp_path / "study", choice, context)
    assert [p.name for p in written] == ["report.md", "tune.png"]
    text = (tmp_path / "study" / "report.md").read_text()

    assert text.startswith("# riftune tune: rift[budget=0.85]\n")
    steady = cells(text, "rift[budget=0.85]")
    assert steady == [
        "**rift[budget=0.85]** (chosen)",
        "4/4",
        "0.8075 ± 0.0055",
        "0.2000 ± 0.0000",
        "-0.0025 ± 0.0003",
        "-0.0030",
        "yes",
        "lower bound -0.0030 >= -0.0050",
    ]
    pruned = cells(text, "rift[budget=0.5]")
    assert pruned[1:3] == ["1/4 pruned", "0.7000"]  # one fold: no standard error
    assert pruned[5:] == ["–", "no", "pruned after 1 of 4 folds"]
    noisy = cells(text, "lora")
    assert noisy[6] == "no" and noisy[7].endswith("may lose AUC")
    plain = cells(text, "plain")
    assert plain[1:4] == ["4/4", "0.8100 ± 0.0058", "0.4000 ± 0.0000"]
    assert "mean − 1.645 × standard error, is at least −0.5 AUC points" in text
    assert "- cost: wall seconds 812.2, trials run 9, pruned 3" in text
    assert "- data: breastmnist --shots 50" in text
    assert choice.explanation in text
    assert "![validation AUC against drift](tune.png)" in text


def test_the_figure_is_a_picture_with_the_candidates(tmp_path):
    write_report(tmp_path, study_choice(), {})
    with Image.open(tmp_path / "tune.png") as image:
        assert image.format == "PNG"
        assert image.width > 600 and image.height > 450
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not a blank canvas


def test_nothing_qualified_is_said_in_the_report(tmp_path):
    worse = CandidateScores("rift[budget=0.7]", (0.78, 0.79, 0.78, 0.79), (0.8,) * 4)
    write_report(tmp_path, choose(PLAIN, [worse]), {"data": "breastmnist"})
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# riftune tune: plain\n")
    assert "**Chosen: plain.** plain: nothing qualified." in text
    assert cells(text, "plain")[0] == "**plain** (chosen)"
