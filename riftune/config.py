"""The flags of ``riftune finetune``, their checks, and the resolved ``config.yaml`` of a run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from riftune import regularizers, tuning
from riftune.errors import UserError

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_DATA = "breastmnist"

# Flags that say how to run, not what to compute: they never enter config.yaml.
RUNTIME_KEYS = ("resume", "overwrite", "quiet", "debug", "command", "handler")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``riftune finetune`` (also used by ``demo`` and ``compare``)."""
    run = parser.add_argument_group("what to finetune")
    run.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="efficientnet_lite0|1|2 (shipped ImageNet weights) or timm:NAME for any timm "
        f"model (default: {DEFAULT_BACKBONE})",
    )
    run.add_argument(
        "--no-pretrained",
        action="store_true",
        help="start from random weights (timm:NAME offline, or tests); CKA is then to the "
        "random initialization",
    )
    run.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="a MedMNIST 2D flag with optional size (breastmnist, breastmnist_64, "
        "pneumoniamnist, retinamnist_128, ...), a MedMNIST-format .npz path, "
        f"imagefolder:PATH or csv:FILE (default: {DEFAULT_DATA})",
    )
    run.add_argument(
        "--data-root",
        default=None,
        help="folder searched first for MedMNIST files (then $RIFTUNE_DATA, then ~/.medmnist)",
    )
    run.add_argument(
        "--shots",
        type=_positive_int,
        default=None,
        help="use K training images per class, drawn with --seed (low-resource runs)",
    )
    run.add_argument(
        "--img-size", type=_positive_int, default=128, help="square image side (default: 128)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed for weights, data order, shots")

    method = parser.add_argument_group("finetuning method")
    method.add_argument(
        "--method",
        default="full",
        help=f"one of: {', '.join(tuning.available())} (default: full)",
    )
    tuning.add_arguments(method)

    reg = parser.add_argument_group("regularizer")
    reg.add_argument(
        "--reg",
        default="none",
        help=f"one of: {', '.join(regularizers.available())} (default: none)",
    )
    reg.add_argument(
        "--lam",
        type=_non_negative_float,
        default=None,
        help="weight of the regularizer: loss = task + lam * penalty (default: the "
        "regularizer's own, 1.0 unless README says otherwise)",
    )
    for name in regularizers.available():
        regularizers.get(name).add_arguments(reg)

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default: 10)")
    train.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="global batch size, split evenly over torchrun processes (default: 32)",
    )
    train.add_argument(
        "--lr", type=_non_negative_float, default=1e-4, help="backbone learning rate (1e-4)"
    )
    train.add_argument(
        "--head-lr", type=_non_negative_float, default=1e-3, help="head learning rate (1e-3)"
    )
    train.add_argument(
        "--weight-decay", type=_non_negative_float, default=0.01, help="AdamW weight decay"
    )
    train.add_argument(
        "--warmup-epochs",
        type=_non_negative_float,
        default=1.0,
        help="linear warmup length before cosine decay, in epochs (default: 1)",
    )
    train.add_argument(
        "--grad-clip",
        type=_non_negative_float,
        default=1.0,
        help="clip the global gradient norm to this (0 disables; default: 1.0)",
    )
    train.add_argument(
        "--augment", action="store_true", help="random flips and crops of training images"
    )
    train.add_argument(
        "--freeze-bn",
        action="store_true",
        help="keep every BatchNorm layer in eval mode (pretrained running statistics) during "
        "training; its affine weights still learn if the method trains them",
    )
    train.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision: auto = bf16 on CUDA, off on the CPU",
    )
    train.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto"
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also checkpoint every N optimizer steps (0: at epoch ends only)",
    )

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-batch-size", type=_positive_int, default=128, help="batch size for evaluation"
    )
    evaluation.add_argument(
        "--landscape-images",
        type=int,
        default=128,
        help="training images (fixed by --seed, no augmentation) on which sharpness and the "
        "Hessian eigenvalue of the task loss are measured (default: 128; 0 skips both)",
    )
    evaluation.add_argument(
        "--sharpness-rho",
        type=_non_negative_float,
        default=0.05,
        help="radius of adaptive (ASAM) sharpness, relative to each weight (default: 0.05; 0 skips)",
    )
    evaluation.add_argument(
        "--sharpness-steps", type=_positive_int, default=3, help="ascent steps (default: 3)"
    )
    evaluation.add_argument(
        "--hessian-iters",
        type=int,
        default=10,
        help="power iterations for the top Hessian eigenvalue (default: 10; 0 skips)",
    )
    evaluation.add_argument(
        "--transfer-data",
        default=None,
        help="another dataset (same forms as --data): report k-NN and linear-probe accuracy "
        "of the finetuned vs the pretrained embeddings on it (retained generalizability)",
    )
    evaluation.add_argument(
        "--transfer-shots",
        type=_positive_int,
        default=None,
        help="use K training images per class of --transfer-data (drawn with --seed) as the "
        "k-NN memory and the probe's training set; its test split is always used whole "
        "(default: all)",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--out", default="runs/latest", help="run folder (default: runs/latest)")
    out.add_argument("--resume", action="store_true", help="continue the run in --out")
    out.add_argument(
        "--overwrite", action="store_true", help="replace a finished or unfinished run in --out"
    )
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--debug", action="store_true", help="show tracebacks")


def finetune_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the finetune flags (to rebuild stored runs and grids)."""
    parser = argparse.ArgumentParser(prog="riftune finetune", add_help=False)
    add_finetune_arguments(parser)
    return parser


def validate(args: argparse.Namespace) -> None:
    """Checks that need more than one flag or the registries; UserError on the first problem."""
    if args.method not in tuning.available():
        raise UserError(
            f"unknown method {args.method!r}; choose one of: {', '.join(tuning.available())}"
        )
    if args.reg not in regularizers.available():
        raise UserError(
            f"unknown regularizer {args.reg!r}; choose one of: "
            f"{', '.join(regularizers.available())}"
        )
    reg = regularizers.get(args.reg)
    if args.lam is None:
        args.lam = reg.default_lam
    if args.batch_size < reg.min_batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} is too small for --reg {args.reg}, which needs at "
            f"least {reg.min_batch_size} images per step; raise --batch-size"
        )
    if reg.penalizes_features_only and not tuning.get(args.method).changes_embeddings:
        raise UserError(
            f"--reg {args.reg} has no effect with --method {args.method}: the backbone is "
            "frozen, so its features stay the pretrained ones; use --reg none or l2sp, or a "
            "method that trains the backbone"
        )
    _check_regularizer_flags(reg, args)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass only one")


def _check_regularizer_flags(reg: type[regularizers.Regularizer], args: argparse.Namespace) -> None:
    """Build the regularizer once from its flags, so a bad value or combination stops the run
    before its folder is written. The embedding size d comes with the model later; no flag check
    depends on it, so a stand-in d = 1 serves."""
    try:
        reg.from_args(args, dim=1)
    except UserError:
        raise
    except ValueError as error:
        raise UserError(f"--reg {args.reg}: {error}") from None


def resolved(args: argparse.Namespace) -> dict:
    """The run's configuration: every flag that changes what is computed."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_KEYS}


def write_config(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=True))


def read_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} not found; is {path.parent} a riftune run folder?")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a riftune configuration")
    return config


def namespace_from_config(config: dict, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The finetune namespace of a stored config: defaults of the current version, then config."""
    args = parser.parse_args([])
    for key, value in config.items():
        setattr(args, key, value)
    for key in RUNTIME_KEYS:
        if not hasattr(args, key):
            setattr(args, key, False)
    return args
