"""The top Hessian eigenvalue of every reported run of a finished `riftune compare` grid.

The CPU grid trains with `--hessian-iters 0` (the power iteration costs about half a 28 px
training run on this machine). This script adds it afterwards: for each run of the grid's
runs.json (WiSE-FT rows excepted) it rebuilds the run, loads its best checkpoint and runs
`riftune.engine.evaluation.landscape_metrics` with `--hessian-iters ITERS` on the run's own fixed
landscape batches (its seed, its `--landscape-images`), exactly as `riftune finetune` would
have. Each result goes to hessian.json in the run folder (runs that have one are skipped, so
it resumes); the table (mean ± std over seeds) is printed and written to GRID/hessian.md.

    python benchmarks/hessian_of_runs.py runs/cpu_grid/full [--iters 10] [--shard K/N]

`--shard K/N` computes only every N-th run starting at the K-th (0-based), for N processes
side by side; a last call without it then only collects the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from riftune.commands.compare import run_folder
from riftune.commands.evaluate import load_finished_run
from riftune.commands.grid import RegularizerVariant
from riftune.engine.evaluation import landscape_metrics
from riftune.runs.folder import write_json_atomic


def folder_of(grid: Path, record: dict) -> Path:
    """The folder `riftune compare` gave the run of a runs.json record."""
    variant = RegularizerVariant(record["reg"], (), record["variant"] or "")
    return run_folder(
        grid, record["dataset"], record["method"], variant.folder, record["lam"], record["seed"]
    )


def hessian_of_run(folder: Path, iters: int) -> float:
    run = load_finished_run(folder, "cpu")
    run.args.sharpness_rho = 0.0
    run.args.hessian_iters = iters  # landscape_metrics puts the model in eval mode itself
    return landscape_metrics(run.model, run.data.train, run.args, run.ctx)["hessian_top_eig"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the --out folder of riftune compare")
    parser.add_argument("--iters", type=int, default=10, help="power iterations (default 10)")
    parser.add_argument("--shard", default="0/1", help="K/N: compute every N-th run from the K-th")
    args = parser.parse_args()
    shard, shards = (int(part) for part in args.shard.split("/"))
    records = [
        r for r in json.loads((args.grid / "runs.json").read_text()) if r["reg"] != "wise-ft"
    ]
    values = defaultdict(list)
    for index, record in enumerate(records):
        folder = folder_of(args.grid, record)
        path = folder / "hessian.json"
        if index % shards != shard:
            continue
        if not path.is_file():  # a shard only computes; the table needs every run
            value = hessian_of_run(folder, args.iters)
            write_json_atomic({"hessian_top_eig": value, "iters": args.iters}, path)
            print(f"{value:12.1f}  {folder}", flush=True)
        if shards > 1:
            continue
        label = record["reg"] + (f" ({record['variant']})" if record["variant"] else "")
        key = (record["dataset"], record["method"], label, record["lam"])
        values[key].append(json.loads(path.read_text())["hessian_top_eig"])
    if shards > 1:
        return
    lines = ["| dataset | method | regularizer | λ | Hessian λmax (mean ± std) | seeds |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for (dataset, method, label, lam), v in values.items():
        spread = statistics.stdev(v) if len(v) > 1 else 0.0
        lam_text = "" if lam is None else f"{lam:g}"
        lines.append(
            f"| {dataset} | {method} | {label} | {lam_text} | "
            f"{statistics.mean(v):.3g} ± {spread:.2g} | {len(v)} |"
        )
    table = "\n".join(lines) + "\n"
    (args.grid / "hessian.md").write_text(table)
    print(table)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
