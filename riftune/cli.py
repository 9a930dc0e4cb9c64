"""``riftune``: finetune, evaluate, wise-ft, compare, tune, export, predict, bench and demo.

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
from riftune.data.formats import forms_help
from riftune.errors import ArgumentParser, UserError
from riftune.runs.signals import PREEMPTED_EXIT, Preempted


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
    from riftune.commands.evaluate import evaluate_run

    metrics = evaluate_run(args.run, device=args.device)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from riftune.commands.demo import run_demo

    print(run_demo(args))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from riftune.commands.compare import GridStopped, run_compare

    try:
        print(run_compare(args, args.passthrough))
    except GridStopped as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0


def _tune(args: argparse.Namespace) -> int:
    from riftune.commands.tune import run_tune
    from riftune.strength.config import from_args
    from riftune.strength.study import TuneStopped

    try:
        print(run_tune(from_args(args, args.passthrough)))
    except TuneStopped as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0


def _wise_ft(args: argparse.Namespace) -> int:
    from riftune.commands.wise_ft import parse_alphas, wise_ft
    from riftune.report import summary_table

    rows = wise_ft(args.run, parse_alphas(args.alphas), device=args.device)
    columns = [("alpha", "α", ".2f")] + [
        (f"{split}.{key}", f"{split} {key}", ".4f")
        for split in ("val", "test")
        for key in ("acc", "auc", "cka")
    ]
    print(summary_table(rows, columns))
    return 0


def _export(args: argparse.Namespace) -> int:
    from riftune.commands.export import export_command

    return export_command(args.run, args.out, args.device)


def _predict(args: argparse.Namespace) -> int:
    from riftune.commands.predict import predict_command

    return predict_command(args.run, args.data, args.out, args.batch_size, args.device)


def _bench(args: argparse.Namespace) -> int:
    from riftune.commands.bench import run_bench

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
            "out of GPU memory; if it ran out in training, start again with a smaller "
            "--batch-size (or --img-size) and --overwrite; if in evaluation, rerun with --resume "
            "and a smaller --eval-batch-size, or --landscape-images 0 to skip sharpness and "
            "the Hessian (evaluation options may change on --resume)"
        )
    return None


def _add_run_arguments(parser: argparse.ArgumentParser, device: str = "auto") -> None:
    """``--run`` (a finished run folder), ``--device`` and ``--debug`` of the commands that
    read a run."""
    parser.add_argument("--run", required=True, help="a finished run folder (finetune's --out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=device)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


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
    _add_run_arguments(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser(
        "demo",
        help="plain finetuning vs finetuning with RIFT on BreastMNIST, side by side",
        description="Finetune the default backbone on BreastMNIST twice with the same seed, "
        "without and with --reg rift, and print accuracy, AUC, CKA and time side by side.",
    )
    from riftune.commands.demo import add_demo_arguments

    add_demo_arguments(demo)
    demo.set_defaults(handler=_demo)

    compare = commands.add_parser(
        "compare",
        help="run a resumable grid of methods x regularizers x lambda x seeds and report it",
        description="Run datasets x methods x regularizers x lambda x seeds (flags or --grid "
        "YAML); lambda is chosen on validation AUC. Writes report.md, tradeoff.png and runs.json "
        "to --out. Unknown flags (e.g. --epochs 5 --img-size 64) are passed to every finetune run.",
    )
    from riftune.commands.compare import add_compare_arguments

    add_compare_arguments(compare)
    compare.set_defaults(handler=_compare)

    tune = commands.add_parser(
        "tune",
        help="choose the strongest representation keeping that costs no AUC on your data",
        description="Finetune plainly and with a ladder of RIFT strengths (or other methods and "
        "regularizers) on folds of train + val, keep the least drifting candidate whose AUC is "
        "non-inferior to plain finetuning's, and write tuned.yaml, report.md and tune.png to "
        "--out (rerun to continue). Unknown flags (--data, --epochs, ...) are every trial's.",
        allow_abbrev=False,  # --reg is a finetune flag tune refuses, not --regularizers
    )
    from riftune.commands.tune import add_tune_arguments

    add_tune_arguments(tune)
    tune.set_defaults(handler=_tune)

    wise = commands.add_parser(
        "wise-ft",
        help="interpolate pretrained and finetuned backbone weights (WiSE-FT) and evaluate",
        description="For each alpha, evaluate (1 - alpha) * pretrained + alpha * finetuned "
        "backbone weights with the finetuned head on the run's validation and test splits; "
        "writes wise_ft.json to the run folder.",
    )
    wise.add_argument(
        "--alphas", default="0,0.1,...,1", help="alphas, e.g. 0,0.25,0.5,0.75,1 or 0,0.1,...,1"
    )
    _add_run_arguments(wise)
    wise.set_defaults(handler=_wise_ft)

    export = commands.add_parser(
        "export",
        help="write a finished run's model as plain timm weights (adapters merged)",
        description="Write the best checkpoint of --run as a plain timm state dict (safetensors, "
        "LoRA and other adapters merged into the weights) and a JSON file beside it with the "
        "architecture, classes, image size and normalization; timm.create_model(name, "
        "num_classes=k) loads it and gives the run's logits.",
    )
    export.add_argument(
        "--out", required=True, help="the .safetensors file to write (its .json goes beside it)"
    )
    _add_run_arguments(export, device="cpu")
    export.set_defaults(handler=_export)

    predict = commands.add_parser(
        "predict",
        help="class probabilities of a finished run's model on new images",
        description="Preprocess new images as the run's own (size, normalization), classify "
        "them with its best checkpoint and write one row per image to --out.",
    )
    predict.add_argument(
        "--data",
        required=True,
        help=f"new images, in any form finetune's --data takes: {forms_help()}",
    )
    predict.add_argument("--out", required=True, help="the predictions CSV to write")
    predict.add_argument("--batch-size", type=_positive_int, default=128)
    _add_run_arguments(predict)
    predict.set_defaults(handler=_predict)

    bench = commands.add_parser(
        "bench",
        help="time each regularizer's training step against plain finetuning",
        description="Interleaved timing of one training step of plain finetuning and of every "
        "regularizer variant on the same model and batch (ratios to plain), the reference "
        "pass as a fraction of an epoch, and RIFT's own cost against d and n. See BENCHMARKS.md.",
    )
    from riftune.commands.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.add_argument("--debug", action="store_true", help="show tracebacks")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if args.command in ("compare", "tune"):
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
    except Preempted as stopped:  # a signal stopped the run after its checkpoint
        print(f"error: {stopped}", file=sys.stderr)
        return PREEMPTED_EXIT
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
