"""Apply issue 4's rule for `--reg rift`'s defaults to a finished `riftune compare` grid.

Rule: among the RIFT variants and λ values, take the one with the highest validation CKA
(mean over the datasets) among those whose validation AUC stays within 0.5 point of plain
finetuning's (`--reg none`) on every dataset. Every (variant, λ) ran with the grid's first
seed (the λ-selection runs), so that seed is what is compared; seeds are averaged where a
pair ran with more of them (only the chosen λ does).

    python benchmarks/rift_default.py runs/cpu_grid/full [--method full] [--tolerance 0.005]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _val(run: Path) -> tuple[float, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["val"]["auc"], metrics["val"]["cka"]


def _mean_over_seeds(folder: Path) -> tuple[float, float, int] | None:
    seeds = [s for s in sorted(folder.glob("seed*")) if (s / "metrics.json").is_file()]
    if not seeds:
        return None
    values = [_val(s) for s in seeds]
    return (
        statistics.mean(v[0] for v in values),
        statistics.mean(v[1] for v in values),
        len(values),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the --out folder of riftune compare")
    parser.add_argument("--method", default="full")
    parser.add_argument("--tolerance", type=float, default=0.005, help="AUC, 0.005 = 0.5 point")
    args = parser.parse_args()
    datasets = sorted(p.name for p in (args.grid / "runs").iterdir() if p.is_dir())
    plain = {d: _mean_over_seeds(args.grid / "runs" / d / args.method / "none" / "no-lam")
             for d in datasets}  # fmt: skip
    rows = []
    for variant in sorted((args.grid / "runs" / datasets[0] / args.method).glob("rift[[]*")):
        for lam in sorted(variant.iterdir(), key=lambda p: float(p.name[3:])):
            cells = {d: _mean_over_seeds(args.grid / "runs" / d / args.method / variant.name
                                         / lam.name) for d in datasets}  # fmt: skip
            if any(c is None or plain[d] is None for d, c in cells.items()):
                continue
            gaps = {d: cells[d][0] - plain[d][0] for d in datasets}
            rows.append({
                "variant": variant.name, "lam": float(lam.name[3:]), "gaps": gaps,
                "cka": {d: cells[d][1] for d in datasets},
                "seeds": {d: cells[d][2] for d in datasets},
                "qualifies": all(g >= -args.tolerance for g in gaps.values()),
            })  # fmt: skip
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
