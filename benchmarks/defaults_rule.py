"""The Defaults rule (docs/strength.md) over several `riftune compare` grids at once (RESULTS.md,
"Defaults").

Each grid's ``runs.json`` (its chosen and swept runs) goes into one set of tables, so a candidate
(one RIFT variant at one λ, or one budget) is judged in every table of every grid: the 50- and
10-image grids and the whole training sets together. Candidates missing from some table are
left out (:func:`riftune.report.default_rule.rift_candidates`). A table name that two grids share
would merge their runs, so that is refused.

    python benchmarks/defaults_rule.py benchmarks/results/evidence benchmarks/results/evidence-whole
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from riftune.report.aggregate import aggregate_runs
from riftune.report.default_rule import default_rule_markdown


def grid_records(folders: list[Path]) -> list[dict]:
    """Every run record of the grids' ``runs.json`` files.

    Raises:
        SystemExit: two grids hold the same table (dataset and training-set size).
    """
    records, owner = [], {}
    for folder in folders:
        runs = json.loads((folder / "runs.json").read_text())
        for table in {r["dataset"] for r in runs}:
            if owner.setdefault(table, folder) != folder:
                raise SystemExit(f"error: {table!r} is in both {owner[table]} and {folder}")
        records += runs
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", type=Path, help="compare output folders")
    args = parser.parse_args()
    print(default_rule_markdown(aggregate_runs(grid_records(args.grids))))


if __name__ == "__main__":
    main()
