"""The committed grids' reports reproduce, line for line, from their committed run files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from riftune.cli import main

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
