"""Learned Q of rank 64 against learned Q of all d dimensions, in two finished CPU grids.

Prints, for each dataset, matching and λ, the seed-0 runs of both (every λ ran with seed 0, so
this compares the two at equal λ rather than at the λ each chose): validation and test AUC and
CKA. With ``--rotations`` it also reads each run's newest progress checkpoint (the grid folders
must still hold them: the committed copies keep only metrics.json and config.yaml) and prints
how far the learned rotation moved: ‖Q − I‖_F and the largest rotation angle, from the largest
singular value σ of Q − I (σ = 2·sin(θ/2)).

    python benchmarks/learned_rank.py benchmarks/results/cpu_grid/full \\
        benchmarks/results/cpu_grid/learned_rank [--rotations]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from riftune import checkpoint
from riftune.compare import run_folder
from riftune.regularizers.rift import HouseholderRotation

DATASETS = ("breastmnist", "pneumoniamnist")
MATCHES = ("covariance", "paired")
LAMS = (0.1, 1.0, 10.0)
VARIANTS = {"all": "rift[{match},learned,all]", "64": "rift[{match},learned,64]"}


def _metrics(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _rotation(folder: Path) -> tuple[float, float] | None:
    """(‖Q − I‖_F, largest angle in degrees) of the run's newest progress checkpoint."""
    path = checkpoint.latest_valid_checkpoint(folder / "checkpoints")
    if path is None:
        return None
    tensors, meta = checkpoint.load_checkpoint(path)
    reflectors = checkpoint.unflatten_state(tensors, meta)["regularizer"][
        "learned_rotation.reflectors"
    ].double()
    d, k = reflectors.shape
    rotation = HouseholderRotation(d, rank=k if k < d else None).double()
    with torch.no_grad():
        rotation.reflectors.copy_(reflectors)
        gap = rotation.matrix() - torch.eye(d, dtype=torch.float64)
    sigma = torch.linalg.matrix_norm(gap, ord=2).item()
    return torch.linalg.matrix_norm(gap).item(), math.degrees(2 * math.asin(min(sigma / 2, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("all_grid", type=Path, help="grid with the rank-d runs (part 1)")
    parser.add_argument("rank_grid", type=Path, help="grid with the rank-64 runs (part 4)")
    parser.add_argument("--rotations", action="store_true", help="also read the checkpoints")
    args = parser.parse_args()
    grids = {"all": args.all_grid, "64": args.rank_grid}
    header = "| dataset | match | λ | val AUC all / 64 | val CKA all / 64 | test AUC all / 64 | test CKA all / 64 |"
    if args.rotations:
        header += " ‖Q − I‖_F all / 64 | largest angle all / 64 |"
    print(header)
    print("|---|---|---:|" + "---:|" * (header.count("|") - 4))
    for dataset in DATASETS:
        for match in MATCHES:
            for lam in LAMS:
                folders = {
                    rank: run_folder(
                        grids[rank], dataset, "full", VARIANTS[rank].format(match=match), lam, 0
                    )
                    for rank in grids
                }
                runs = {rank: _metrics(folder) for rank, folder in folders.items()}
                if None in runs.values():
                    continue
                cells = [
                    " / ".join(f"{runs[rank][split][key]:.3f}" for rank in grids)
                    for split, key in (
                        ("val", "auc"),
                        ("val", "cka"),
                        ("test", "auc"),
                        ("test", "cka"),
                    )
                ]
                if args.rotations:
                    moved = {rank: _rotation(folder) for rank, folder in folders.items()}
                    cells += [
                        " / ".join(
                            "–" if moved[rank] is None else f"{moved[rank][i]:{fmt}}"
                            for rank in grids
                        )
                        for i, fmt in ((0, ".1f"), (1, ".0f"))
                    ]
                print(f"| {dataset} | {match} | {lam:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
