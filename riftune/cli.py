"""``riftune``: finetune, evaluate and demo from the command line.

Problems the user can fix (bad flags, bad files, a run folder in the wrong state) end with
``error: <one line>`` and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from riftune import __version__
from riftune.config import add_finetune_flags
from riftune.errors import ArgumentParser, UserError


def _finetune(args: argparse.Namespace) -> int:
    import yaml

    from riftune.config import run_config_from_args
    from riftune.engine import finetune

    config = run_config_from_args(args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    finetune(config)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from riftune.evaluate_run import evaluate_run

    metrics = evaluate_run(args.run, device=args.device)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from riftune.demo import run_demo

    print(run_demo(args))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from riftune.compare import run_compare

    print(run_compare(args, args.passthrough))
    return 0


def _wise_ft(args: argparse.Namespace) -> int:
    from riftune.report import summary_table
    from riftune.wise_ft import parse_alphas, wise_ft

    rows = wise_ft(args.run, parse_alphas(args.alphas), device=args.device)
    columns = [("alpha", "α", ".2f")] + [
        (f"{split}.{key}", f"{split} {key}", ".4f")
        for split in ("val", "test")
        for key in ("acc", "auc", "cka")
    ]
    print(summary_table(rows, columns))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from riftune.bench import run_bench

    print(run_bench(args))
    return 0


def _runtime_failure(error: Exception) -> str | None:
    """A one-line message for failures during a run that the user can act on, else None."""
    import torch

    from riftune.engine import NonFiniteLossError

    if isinstance(error, NonFiniteLossError):
        return str(error)
    if isinstance(error, torch.OutOfMemoryError):
        return (
            "out of GPU memory; lower --batch-size (or --img-size, --eval-batch-size), "
            "then rerun with --resume"
        )
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="riftune",
        description="Finetune pretrained vision models on small medical datasets while keeping "
        "their pretrained representations (RIFT and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"riftune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    finetune = commands.add_parser(
        "finetune",
        help="finetune a backbone on a dataset with a method and a regularizer",
        description="Finetune --backbone on --data with --method and --reg; writes config.yaml, "
        "metrics.json, history.csv, checkpoints/ and figures to --out. Options of methods and "
        "regularizers other than the chosen ones are accepted and ignored.",
    )
    add_finetune_flags(finetune)
    finetune.set_defaults(handler=_finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="re-evaluate a finished run's best checkpoint on its test split",
        description="Rebuild a run from its config.yaml, load its best checkpoint and print its "
        "test metrics (they reproduce metrics.json).",
    )
    evaluate.add_argument("--run", required=True, help="the run folder (finetune's --out)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    evaluate.add_argument("--debug", action="store_true", help="show tracebacks")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser(
        "demo",
        help="plain finetuning vs finetuning with RIFT on BreastMNIST, side by side",
        description="Finetune the default backbone on BreastMNIST twice with the same seed, "
        "without and with --reg rift, and print accuracy, AUC, CKA and time side by side.",
    )
    from riftune.demo import add_demo_arguments

    add_demo_arguments(demo)
    demo.set_defaults(handler=_demo)

    compare = commands.add_parser(
        "compare",
        help="run a resumable grid of methods x regularizers x lambda x seeds and report it",
        description="Run datasets x methods x regularizers x lambda x seeds (flags or --grid "
        "YAML); lambda is chosen on validation AUC. Writes report.md, tradeoff.png and runs.json "
        "to --out. Unknown flags (e.g. --epochs 5 --img-size 64) are passed to every finetune run.",
    )
    from riftune.compare import add_compare_arguments

    add_compare_arguments(compare)
    compare.set_defaults(handler=_compare)

    wise = commands.add_parser(
        "wise-ft",
        help="interpolate pretrained and finetuned backbone weights (WiSE-FT) and evaluate",
        description="For each alpha, evaluate (1 - alpha) * pretrained + alpha * finetuned "
        "backbone weights with the finetuned head on the run's validation and test splits; "
        "writes wise_ft.json to the run folder.",
    )
    wise.add_argument("--run", required=True, help="a finished run folder")
    wise.add_argument(
        "--alphas", default="0,0.1,...,1", help="alphas, e.g. 0,0.25,0.5,0.75,1 or 0,0.1,...,1"
    )
    wise.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    wise.add_argument("--debug", action="store_true", help="show tracebacks")
    wise.set_defaults(handler=_wise_ft)

    bench = commands.add_parser(
        "bench",
        help="time each regularizer's training step against plain finetuning",
        description="Interleaved timing of one training step of plain finetuning and of every "
        "regularizer variant on the same model and batch (ratios to plain), the reference "
        "pass as a fraction of an epoch, and RIFT's own cost against d and n. See BENCHMARKS.md.",
    )
    from riftune.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.add_argument("--debug", action="store_true", help="show tracebacks")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if args.command == "compare":
            args.passthrough = unknown
        elif unknown:
            raise UserError(f"unrecognized arguments: {' '.join(unknown)}")
    except UserError as error:
        if "--debug" in argv:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except UserError as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # run-time failures with a known remedy get one line too
        message = _runtime_failure(error)
        if message is None or getattr(args, "debug", False):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
