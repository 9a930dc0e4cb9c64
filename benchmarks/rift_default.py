"""Apply issue 4's rule for `--reg rift`'s defaults to a finished `riftune compare` grid.

Rule: among the RIFT variants and λ values, take the one with the highest validation CKA
(mean over the datasets) among those whose validation AUC stays within 0.5 point of plain
finetuning's (`--reg none`) on every dataset. Every (variant, λ) ran with the grid's first
seed (the λ-selection runs); a pair that ran with more seeds (the chosen λ) is compared over
all of them. Each comparison with plain finetuning uses the same seeds on both sides.

    python benchmarks/rift_default.py runs/cpu_grid/full [--method full] [--tolerance 0.005]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _by_seed(folder: Path) -> dict[str, tuple[float, float]]:
    """{seed folder name: (val AUC, val CKA)} of the finished runs in a λ folder."""
    values = {}
    for seed in sorted(folder.glob("seed*")):
        if (seed / "metrics.json").is_file():
            metrics = json.loads((seed / "metrics.json").read_text())
            values[seed.name] = (metrics["val"]["auc"], metrics["val"]["cka"])
    return values


def _rows(grid: Path, method: str, tolerance: float) -> tuple[list[str], list[dict]]:
    datasets = sorted(p.name for p in (grid / "runs").iterdir() if p.is_dir())
    plain = {d: _by_seed(grid / "runs" / d / method / "none" / "no-lam") for d in datasets}
    rows = []
    for variant in sorted((grid / "runs" / datasets[0] / method).glob("rift[[]*")):
        for lam in sorted(variant.iterdir(), key=lambda p: float(p.name[3:])):
            gaps, cka, seeds = {}, {}, {}
            for d in datasets:
                runs = _by_seed(grid / "runs" / d / method / variant.name / lam.name)
                common = sorted(runs.keys() & plain[d].keys())  # the same seeds on both sides
                if not common:
                    break
                gaps[d] = statistics.mean(runs[s][0] - plain[d][s][0] for s in common)
                cka[d] = statistics.mean(runs[s][1] for s in common)
                seeds[d] = len(common)
            else:
                qualifies = all(g >= -tolerance for g in gaps.values())
                rows.append({"variant": variant.name, "lam": float(lam.name[3:]), "gaps": gaps,
                             "cka": cka, "seeds": seeds, "qualifies": qualifies})  # fmt: skip
    return datasets, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the --out folder of riftune compare")
    parser.add_argument("--method", default="full")
    parser.add_argument("--tolerance", type=float, default=0.005, help="AUC, 0.005 = 0.5 point")
    args = parser.parse_args()
    datasets, rows = _rows(args.grid, args.method, args.tolerance)
    print(
        "| variant | λ | "
        + " | ".join(f"val AUC − plain, {d}" for d in datasets)
        + " | "
        + " | ".join(f"val CKA, {d}" for d in datasets)
        + " | seeds | qualifies |"
    )
    print("|---|---:|" + "---:|" * (2 * len(datasets)) + "---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['lam']:g} | "
              + " | ".join(f"{100 * r['gaps'][d]:+.1f}" for d in datasets) + " | "
              + " | ".join(f"{r['cka'][d]:.3f}" for d in datasets) + " | "
              + "/".join(str(r["seeds"][d]) for d in datasets)
              + f" | {'yes' if r['qualifies'] else 'no'} |")  # fmt: skip
    qualified = [r for r in rows if r["qualifies"]]
    if not qualified:
        print("\nno variant qualifies: keep the current default")
        return
    best = max(qualified, key=lambda r: statistics.mean(r["cka"].values()))
    print(f"\nchosen: {best['variant']} at λ = {best['lam']:g} "
          f"(mean val CKA {statistics.mean(best['cka'].values()):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
