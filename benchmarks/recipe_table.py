"""Rebuild the tables of benchmarks/results/recipe/README.md from the committed run folders.

Every run folder is ``benchmarks/results/recipe/runs/<recipe>/<dataset>/seed<k>`` with the
``metrics.json``, ``config.yaml`` and ``history.csv`` that ``riftune finetune`` wrote.

    python benchmarks/recipe_table.py            # selection table (val) and final table (test)
    python benchmarks/recipe_table.py --runs DIR

Every-run table: one row per (recipe, dataset, seed) with the flags read back from config.yaml,
validation AUC/accuracy of the selected checkpoint (what the choice used), its epoch, and the test
numbers (shown, never used to choose). Final table: mean ± sample std over seeds of test AUC and
accuracy per (recipe, dataset) with at least 2 seeds, beside MedMNIST v2's ResNet-18 (28) row
(Yang et al., Scientific Data 2023, Table 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

# MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023), Table 3, ResNet-18 (28): (AUC, ACC).
PUBLISHED = {"breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854)}


def dataset_key(data: str) -> str:
    """'breastmnist_64' -> 'breastmnist' (the published row is per dataset)."""
    return data.split("_")[0]


def load_runs(root: Path) -> list[dict]:
    rows = []
    for metrics_file in sorted(root.glob("*/*/seed*/metrics.json")):
        folder = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        training, data = config["training"], config["data"]
        rows.append(
            {
                "recipe": folder.parent.parent.name,
                "data": data["data"],
                "seed": training["seed"],
                "img": data["img_size"],
                "epochs": training["epochs"],
                "lr": training["lr"],
                "head_lr": training["head_lr"],
                "augment": training["augment"],
                "freeze_bn": training["freeze_bn"],
                "best_epoch": metrics.get("best_epoch"),
                "val_auc": metrics["val"]["auc"],
                "val_acc": metrics["val"]["acc"],
                "test_auc": metrics["test"]["auc"],
                "test_acc": metrics["test"]["acc"],
                "wall_s": metrics.get("wall_seconds"),
            }
        )
    return rows


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def selection_table(rows: list[dict]) -> str:
    lines = [
        "| recipe | data | seed | img | epochs | lr | head-lr | augment | best epoch "
        "| val AUC | val acc | (test AUC) | (test acc) | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["data"], r["seed"], -r["val_auc"])):
        lines.append(
            f"| {r['recipe']} | {r['data']} | {r['seed']} | {r['img']} | {r['epochs']} "
            f"| {r['lr']:g} | {r['head_lr']:g} | {'on' if r['augment'] else 'off'} "
            f"| {r['best_epoch']} | {r['val_auc']:.3f} | {r['val_acc']:.3f} "
            f"| ({r['test_auc']:.3f}) | ({r['test_acc']:.3f}) | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def final_table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["recipe"], r["data"])].append(r)
    lines = [
        "| recipe | data | seeds | val AUC | test AUC | test acc | published AUC / acc "
        "| AUC − published | acc − published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (recipe, data), runs in sorted(groups.items()):
        if len(runs) < 2:
            continue
        runs.sort(key=lambda r: r["seed"])
        auc = [r["test_auc"] for r in runs]
        acc = [r["test_acc"] for r in runs]
        pub_auc, pub_acc = PUBLISHED.get(dataset_key(data), (float("nan"), float("nan")))
        lines.append(
            f"| {recipe} | {data} | {','.join(str(r['seed']) for r in runs)} "
            f"| {mean_std([r['val_auc'] for r in runs])} | {mean_std(auc)} | {mean_std(acc)} "
            f"| {pub_auc:.3f} / {pub_acc:.3f} "
            f"| {statistics.mean(auc) - pub_auc:+.3f} | {statistics.mean(acc) - pub_acc:+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent / "results" / "recipe" / "runs"
    parser.add_argument("--runs", type=Path, default=default, help="folder of run folders")
    args = parser.parse_args()
    rows = load_runs(args.runs)
    print(
        "## Every run, by dataset, seed, then validation AUC (BreastMNIST seed 0: the selection;"
        " test in parentheses, not used to choose)\n"
    )
    print(selection_table(rows))
    print("\n## Multi-seed (mean ± sample std over seeds)\n")
    print(final_table(rows))


if __name__ == "__main__":
    main()
