"""Two RIFT variants of full finetuning, each from a finished CPU grid, at equal λ.

Prints, for each dataset, matching and λ, the seed-0 runs of both (every λ ran with seed 0, so
this compares the two at equal λ rather than at the λ each chose): validation and test AUC and
CKA, then the mean difference (second minus first) over the pairs. With ``--rotations`` it also
reads each run's newest progress checkpoint (the grid folders must still hold them: the
committed copies keep only metrics.json and config.yaml) and prints how far the learned
rotation moved (both variants must then learn Q): ‖Q − I‖_F and the largest rotation angle,
from the largest singular value σ of Q − I (σ = 2·sin(θ/2)). By default it compares rank 64
(part 4) with all d (part 1):

    python benchmarks/learned_rank.py benchmarks/results/cpu_grid/full \\
        benchmarks/results/cpu_grid/learned_rank [--rotations]

and with ``--variants`` any two (e.g. ``"rift[{match},identity]"`` of part 1), such as Q's
learning rate 1e-3 (part 4) against 1e-4 (part 6):

    python benchmarks/learned_rank.py benchmarks/results/cpu_grid/learned_rank \\
        benchmarks/results/cpu_grid/q_lr --variants "rift[{match},learned,64]" \\
        "rift[{match},learned,64,0.0001]" --names 1e-3 1e-4
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from riftune.commands.compare import run_folder
from riftune.regularizers.rift import HouseholderRotation
from riftune.runs import checkpoint_file as checkpoint

DATASETS = ("breastmnist", "pneumoniamnist")
MATCHES = ("covariance", "paired")
LAMS = (0.1, 1.0, 10.0)
METRICS = (("val", "auc"), ("val", "cka"), ("test", "auc"), ("test", "cka"))


def _metrics(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _rotation(folder: Path) -> tuple[float, float] | None:
    """(‖Q − I‖_F, largest angle in degrees) of the run's newest progress checkpoint."""
    path = checkpoint.latest_valid_checkpoint(folder / "checkpoints")
    if path is None:
        return None
    tensors, meta = checkpoint.load_checkpoint(path)
    state = checkpoint.unflatten_state(tensors, meta)["regularizer"]
    # runs from before Q was a strategy module kept the reflectors under the old key
    key = (
        "q.rotation.reflectors"
        if "q.rotation.reflectors" in state
        else "learned_rotation.reflectors"
    )
    reflectors = state[key].double()
    d, k = reflectors.shape
    rotation = HouseholderRotation(d, rank=k if k < d else None).double()
    with torch.no_grad():
        rotation.reflectors.copy_(reflectors)
        gap = rotation.matrix() - torch.eye(d, dtype=torch.float64)
    sigma = torch.linalg.matrix_norm(gap, ord=2).item()
    return torch.linalg.matrix_norm(gap).item(), math.degrees(2 * math.asin(min(sigma / 2, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first_grid", type=Path, help="grid with the first variant's runs")
    parser.add_argument("second_grid", type=Path, help="grid with the second variant's runs")
    parser.add_argument(
        "--variants",
        nargs=2,
        default=["rift[{match},learned,all]", "rift[{match},learned,64]"],
        metavar=("FIRST", "SECOND"),
        help="run folder names, {match} standing for covariance or paired",
    )
    parser.add_argument("--names", nargs=2, default=["all", "64"], metavar=("FIRST", "SECOND"))
    parser.add_argument("--rotations", action="store_true", help="also read the checkpoints")
    args = parser.parse_args()
    if args.names[0] == args.names[1]:
        parser.error("--names must differ: they label the two variants' columns")
    grids = dict(zip(args.names, (args.first_grid, args.second_grid), strict=True))
    templates = dict(zip(args.names, args.variants, strict=True))
    pair = " / ".join(args.names)
    header = f"| dataset | match | λ | val AUC {pair} | val CKA {pair} | test AUC {pair} | test CKA {pair} |"
    if args.rotations:
        header += f" ‖Q − I‖_F {pair} | largest angle {pair} |"
    print(header)
    print("|---|---|---:|" + "---:|" * (header.count("|") - 4))
    differences = []
    for dataset in DATASETS:
        for match in MATCHES:
            for lam in LAMS:
                folders = {
                    name: run_folder(
                        grids[name], dataset, "full", templates[name].format(match=match), lam, 0
                    )
                    for name in grids
                }
                runs = {name: _metrics(folder) for name, folder in folders.items()}
                if None in runs.values():
                    continue
                first, second = runs.values()
                differences.append([second[s][k] - first[s][k] for s, k in METRICS])
                cells = [
                    " / ".join(f"{runs[name][split][key]:.3f}" for name in grids)
                    for split, key in METRICS
                ]
                if args.rotations:
                    moved = {name: _rotation(folder) for name, folder in folders.items()}
                    cells += [
                        " / ".join(
                            "–" if moved[name] is None else f"{moved[name][i]:{fmt}}"
                            for name in grids
                        )
                        for i, fmt in ((0, ".1f"), (1, ".0f"))
                    ]
                print(f"| {dataset} | {match} | {lam:g} | " + " | ".join(cells) + " |")
    if differences:
        means = [sum(column) / len(differences) for column in zip(*differences, strict=True)]
        print(
            f"\n{args.names[1]} minus {args.names[0]}, mean over {len(differences)} pairs: "
            + ", ".join(
                f"{split} {key.upper()} {mean:+.3f}"
                for (split, key), mean in zip(METRICS, means, strict=True)
            )
        )


if __name__ == "__main__":
    main()
