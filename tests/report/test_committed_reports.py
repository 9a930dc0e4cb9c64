"""The committed grids' reports reproduce, line for line, from their committed run files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import riftune
from riftune.cli import main
from riftune.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
PARTS = ["full", "peft", "linear", "learned_rank", "peft_learned", "q_lr", "freeze_bn"]
#: (committed grid folder, its grid file) of every committed compare grid
GRIDS = {
    **{part: (f"cpu_grid/{part}", f"grid_cpu_{part}.yaml") for part in PARTS},
    "evidence": ("evidence", "grid_evidence.yaml"),
    "evidence-erosion": ("evidence-erosion", "grid_evidence_erosion.yaml"),
    "evidence-whole": ("evidence-whole", "grid_evidence_whole.yaml"),
    "evidence-methods": ("evidence-methods", "grid_evidence_methods.yaml"),
    "evidence-linear": ("evidence-linear", "grid_evidence_linear.yaml"),
    "delta-attention": ("delta_attention", "grid_delta_attention.yaml"),
    # the final runs of RESULTS.md's "Tuned for each dataset" (benchmarks/tune_evidence.py)
    **{
        f"tuned-{setting}": (f"tune/{setting}/final", f"results/tune/{setting}/grid.yaml")
        for setting in (
            "breastmnist-50shots",
            "pneumoniamnist-50shots",
            "breastmnist-whole",
            "breastmnist-erosion",
            "breastmnist-erosion-lam",
            "pneumoniamnist-whole",
        )
    },
}


def _without_command(text: str) -> list[str]:
    """The report's lines but the one naming the command (its --out path differs)."""
    return [line for line in text.splitlines() if not line.startswith("- Command:")]


@pytest.mark.parametrize("name", GRIDS)
def test_compare_report_only_reproduces_the_committed_report(tmp_path, name):
    folder, grid_file = GRIDS[name]
    committed = REPO / "benchmarks" / "results" / folder
    out = tmp_path / name
    shutil.copytree(committed, out)
    grid = REPO / "benchmarks" / grid_file
    assert (
        main(["compare", "--out", str(out), "--grid", str(grid), "--report-only", "--quiet"]) == 0
    )
    assert _without_command((out / "report.md").read_text()) == _without_command(
        (committed / "report.md").read_text()
    )


@pytest.mark.parametrize(
    "setting",
    [
        "breastmnist-50shots",
        "pneumoniamnist-50shots",
        "breastmnist-whole",
        "breastmnist-erosion",
        "breastmnist-erosion-lam",
        "pneumoniamnist-whole",
    ],
)
def test_a_committed_tune_study_reproduces_its_report_without_running(
    tmp_path, medmnist_dir, monkeypatch, setting
):
    """Rerunning `riftune tune` on a committed study (its journal, the trials' configs and
    metrics) launches nothing and writes the same report.md and tuned.yaml."""
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    committed = REPO / "benchmarks" / "results" / "tune" / setting / "tune"
    out = tmp_path / "tune"
    # what is committed (a working tree may hold the trials' checkpoints too)
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("checkpoints"))
    settings = yaml.safe_load((committed / "study.yaml").read_text())
    riftune.tune({**settings, "out": str(out), "quiet": True})
    assert (out / "report.md").read_text() == (committed / "report.md").read_text()
    # the same configuration (a committed tuned.yaml predates options added since)
    tuned = [load_run_config(folder / "tuned.yaml").to_dict() for folder in (out, committed)]
    assert tuned[0] == tuned[1]
    assert not list(out.glob("trials/*/*/checkpoints"))  # no trial ran again
