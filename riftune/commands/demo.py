"""``riftune demo``: plain finetuning and finetuning with RIFT, same seed, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from riftune.config import DataConfig, RunConfig, TrainingConfig
from riftune.engine import finetune
from riftune.report import summary_table

DEMO_RUNS = (("full", "none"), ("full", "rift"))


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for the two runs")
    parser.add_argument("--data", default="breastmnist", help="dataset (default: breastmnist)")
    parser.add_argument("--data-root", default=None, help="folder with the MedMNIST files")
    epochs, img_size = TrainingConfig().epochs, DataConfig().img_size  # the default recipe's
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"epochs per run (default: {epochs})"
    )
    parser.add_argument(
        "--img-size", type=int, default=img_size, help=f"image side (default: {img_size})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def demo_config(args: argparse.Namespace, method: str, reg: str) -> RunConfig:
    """One of the demo's runs: the default recipe with the demo's epochs, size and seed."""
    return RunConfig.from_dict(
        {
            "data": {"data": args.data, "data_root": args.data_root, "img_size": args.img_size},
            "method": {"name": method},
            "regularizer": {"name": reg},
            "training": {"epochs": args.epochs, "seed": args.seed, "device": args.device},
            # the demo's table has no Hessian column; save the time
            "evaluation": {"hessian_iters": 0},
            "output": {
                "out": str(Path(args.out) / f"{method}-{reg}"),
                "overwrite": True,
                "quiet": args.quiet,
                "debug": args.debug,
            },
        }
    )


def run_demo(args: argparse.Namespace) -> str:
    """Run both configurations (replacing earlier demo runs in ``--out``); a Markdown table."""
    rows = []
    for method, reg in DEMO_RUNS:
        config = demo_config(args, method, reg)
        metrics = finetune(config)
        rows.append(
            {
                "run": f"{method} + {reg}",
                "acc": metrics["test"]["acc"],
                "auc": metrics["test"]["auc"],
                "cka": metrics["test"]["cka"],
                "seconds": metrics["wall_seconds"],
                "folder": config.output.out,
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
