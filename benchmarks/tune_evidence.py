"""RESULTS.md's "Tuned for each dataset": `riftune tune` per setting, then the tuned choice, plain
finetuning and the global default (`--reg rift`: similarity budget 0.8) trained on 3 seeds.

For each setting (a dataset, its training-set size and recipe) this runs, resumably:

1. ``riftune tune --out OUT/SETTING/tune`` with the study's defaults (3 folds of train + val,
   RIFT's similarity budgets anchored on plain finetuning's drift; the test split never read);
2. ``riftune compare --grid OUT/SETTING/grid.yaml --out OUT/SETTING/final``: plain, the default
   and the tuned candidate (written into grid.yaml from tune.json), seeds 0-2, with the evidence
   grid's evaluation (corrupted test images, retained k-NN accuracy on the other dataset);

then prints one table of every setting: test AUC, accuracy, CKA, drift (1 − CKA), retained k-NN
accuracy and corrupted-data AUC, each tuned row's AUC difference to plain and drift ratio, and
the study's cost. ``--report-only`` re-reads the committed folders without running anything.

    python benchmarks/tune_evidence.py [--settings breastmnist-50shots,...] [--report-only]

Two runs at a time, one thread each (``--jobs``); needs the MedMNIST files in $RIFTUNE_DATA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from riftune.commands.grid import parse_variant

OUT = Path("benchmarks/results/tune")
DEFAULT_VARIANT = "rift[match=paired,q=optimal,target-similarity=0.8]"
TRANSFER = {"breastmnist": ["--transfer-data", "pneumoniamnist", "--transfer-shots", "200"],
            "pneumoniamnist": ["--transfer-data", "breastmnist"]}  # fmt: skip
SETTINGS = {  # name: (dataset, images per class or None (all), finetune flags, tune flags)
    "breastmnist-50shots": ("breastmnist", 50, [], []),
    "pneumoniamnist-50shots": ("pneumoniamnist", 50, [], []),
    "breastmnist-whole": ("breastmnist", None, [], []),
    "breastmnist-erosion": ("breastmnist", None, ["--lr", "0.001"], []),  # a 10x learning rate
    # the same, with a ladder of fixed λ (λ = 0.1 held up there where the budgets lost AUC)
    "breastmnist-erosion-lam": ("breastmnist", None, ["--lr", "0.001"], ["--ladder", "lam"]),
    "pneumoniamnist-whole": ("pneumoniamnist", None, [], []),
}
COLUMNS = ("auc", "acc", "cka", "drift", "knn", "robust_auc")


def variant_of(flags: list[str]) -> tuple[str, list[float] | None]:
    """A compare variant (and its λ, if any) from a candidate's finetune flags."""
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    name = options.pop("--reg")
    options.pop("--method", None)
    lam = options.pop("--lam", None)
    if name == "none":
        return "none", None
    keys = [f"{flag.removeprefix('--').removeprefix(name + '-')}={value}"
            for flag, value in options.items()]  # fmt: skip
    text = name + (f"[{','.join(keys)}]" if keys else "")
    return text, None if lam is None else [float(lam)]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def evidence(name: str, jobs: int, report_only: bool) -> dict:
    """Tune one setting, train its three rows, return what the table shows."""
    dataset, shots, flags, tune_flags = SETTINGS[name]
    folder = OUT / name
    recipe = ["--data", dataset, *(["--shots", str(shots)] if shots else []), *flags]
    riftune = [sys.executable, "-m", "riftune"]
    if not report_only:
        run([*riftune, "tune", "--out", str(folder / "tune"), "--jobs", str(jobs), "--quiet",
             *tune_flags, *recipe])  # fmt: skip
    state = json.loads((folder / "tune" / "tune.json").read_text())
    chosen = state["chosen"]
    tuned, lams = variant_of(state["chosen_flags"])
    grid = {"data": [dataset], "shots": [shots or "all"], "methods": ["full"], "seeds": [0, 1, 2],
            "regs": ["none", DEFAULT_VARIANT] + ([] if tuned == "none" else
                     [tuned if lams is None else {"reg": tuned, "lams": lams}]),
            "finetune": {"robustness": True, **_flag_dict(flags + TRANSFER[dataset])}}  # fmt: skip
    if not report_only:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    run([*riftune, "compare", "--grid", str(folder / "grid.yaml"), "--out", str(folder / "final"),
         "--jobs", str(jobs), "--quiet", *(["--report-only"] if report_only else [])])  # fmt: skip
    records = json.loads((folder / "final" / "runs.json").read_text())
    rows = {}
    for label, variant in (("plain", "none"), ("default (S = 0.8)", DEFAULT_VARIANT),
                           (f"tuned: {chosen}", tuned)):  # fmt: skip
        runs = [r for r in records if r["chosen"] and _is(r, variant)]
        rows[label] = {key: _mean([_value(r, key) for r in runs]) for key in COLUMNS}
        rows[label]["seeds"] = len(runs)
    # one default-recipe run: a plain final run without the evaluations the recipe lacks
    single = _mean([r["wall_seconds"] - r.get("timing.robustness", 0) - r.get("timing.transfer", 0)
                    for r in records if r["chosen"] and _is(r, "none")])  # fmt: skip
    return {"rows": rows, "chosen": chosen, "wall": state["wall_seconds"], "single": single,
            "trials": sum(len(v) for v in state["candidates"].values()),
            "pruned": len(state["pruned"])}  # fmt: skip


def _flag_dict(flags: list[str]) -> dict:
    return {
        flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2], strict=True)
    }


def _is(record: dict, text: str) -> bool:
    """Whether a compare record ran the variant ``text``."""
    variant = parse_variant(text)
    return record["reg"] == variant.name and (record.get("variant") or "") == variant.label


_KEYS = {"auc": "test.auc", "acc": "test.acc", "cka": "test.cka", "knn": "transfer.knn_acc",
         "robust_auc": "robust.mean_auc"}  # fmt: skip


def _value(record: dict, key: str) -> float | None:
    if key == "drift":
        return None if record.get("test.cka") is None else 1.0 - record["test.cka"]
    return record.get(_KEYS[key])


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def table(results: dict[str, dict]) -> str:
    """The Markdown table of every setting, with the tuned row's AUC difference and drift ratio."""
    lines = ["| setting | row | seeds | test AUC | acc | CKA | drift | k-NN retained | "
             "corrupted AUC | AUC − plain (points) | drift / plain's |",
             "|" + "---|" * 11]  # fmt: skip
    for name, result in results.items():
        plain = result["rows"]["plain"]
        for label, row in result["rows"].items():
            cells = ["" if row[k] is None else f"{row[k]:.3f}" for k in COLUMNS]
            diff = ratio = ""
            if label != "plain" and row["auc"] is not None:
                diff = f"{100 * (row['auc'] - plain['auc']):+.1f}"
                ratio = f"{row['drift'] / plain['drift']:.2f}"
            lines.append(f"| {name} | {label} | {row['seeds']} | " + " | ".join(cells)
                         + f" | {diff} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, of {', '.join(SETTINGS)}")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {name: evidence(name, args.jobs, args.report_only)
               for name in args.settings.split(",")}  # fmt: skip
    print(table(results))
    for name, result in results.items():
        print(f"{name}: tune chose {result['chosen']}; {result['trials']} trial runs, "
              f"{result['pruned']} candidates pruned; {result['wall']:.0f} s of wall time = "
              f"{result['wall'] / result['single']:.1f} default-recipe runs of "
              f"{result['single']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
