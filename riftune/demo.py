"""``riftune demo``: plain finetuning and finetuning with RIFT, same seed, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from riftune import config as config_module
from riftune.engine import finetune
from riftune.report import summary_table

DEMO_RUNS = (("full", "none"), ("full", "rift"))


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for the two runs")
    parser.add_argument("--data", default="breastmnist", help="dataset (default: breastmnist)")
    parser.add_argument("--data-root", default=None, help="folder with the MedMNIST files")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8)")
    parser.add_argument("--img-size", type=int, default=96, help="image side (default: 96)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run_demo(args: argparse.Namespace) -> str:
    """Run both configurations (replacing earlier demo runs in ``--out``); a Markdown table."""
    rows = []
    for method, reg in DEMO_RUNS:
        run_args = config_module.finetune_parser().parse_args(
            [
                "--data",
                args.data,
                "--method",
                method,
                "--reg",
                reg,
                "--epochs",
                str(args.epochs),
                "--img-size",
                str(args.img_size),
                "--seed",
                str(args.seed),
                "--device",
                args.device,
                "--out",
                str(Path(args.out) / f"{method}-{reg}"),
                "--overwrite",
                "--hessian-iters",
                "0",  # the demo's table has no Hessian column; save the time
            ]
            + (["--data-root", args.data_root] if args.data_root else [])
            + (["--quiet"] if args.quiet else [])
        )
        run_args.debug = args.debug
        metrics = finetune(run_args)
        rows.append(
            {
                "run": f"{method} + {reg}",
                "acc": metrics["test"]["acc"],
                "auc": metrics["test"]["auc"],
                "cka": metrics["test"]["cka"],
                "seconds": metrics["wall_seconds"],
                "folder": run_args.out,
            }
        )
    table = summary_table(
        rows,
        [
            ("run", "run", ""),
            ("acc", "test accuracy", ".3f"),
            ("auc", "test AUC", ".3f"),
            ("cka", "test CKA to pretrained", ".3f"),
            ("seconds", "time (s)", ".0f"),
            ("folder", "figures and metrics in", ""),
        ],
    )
    return table
