"""``riftune bench``: what each regularizer adds to a training step, as a ratio to plain finetuning.

All variants train the same model on the same fixed batch with the engine's own
:class:`~riftune.engine.step.TrainStep`. Measurements are interleaved step by step: each round visits
the variants in a shuffled order and, for each, alternates ``--steps`` steps of plain finetuning
with ``--steps`` steps of the variant (plain, variant, variant, plain, ...), after ``--warmup``
untimed steps of every variant. Drift of a shared machine over the seconds of one block hits
both alike, so a variant's ratio is the median over rounds of (its median step time / plain
finetuning's median step time in the same block). Medians hide work done every k-th step
(EMA with optimal Q refreshes an eigenbasis every ``--rift-eigh-every`` steps), so each
variant also gets an amortized ratio (and the standard error of its round ratios, which shows
how well this machine's noise lets the run resolve it): the total time of all its timed steps over the total
time of the plain steps interleaved with them. Whole steps swing by ±20% on a shared CPU, so
each variant also gets the forward and backward of its penalty alone (on the step's own
embeddings, :func:`~riftune.commands.bench_penalty.penalty_cost`) as a fraction of the plain step. On CUDA the peak memory of each variant's
steps is measured too (``torch.cuda.max_memory_allocated``).

Also measured: the reference pass (pretrained embeddings of one epoch's images, eval mode, plus
RIFT's statistics) as a fraction of one training epoch; and the regularizer's own cost
(forward + backward of the penalty alone on random embeddings) against feature size d and
batch size n.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from riftune import distributed, regularizers
from riftune.commands.bench_penalty import penalty_cost, step_inputs
from riftune.commands.bench_variants import REFERENCE_BATCHES, Variant, default_variants, q_variants
from riftune.engine.build import autocast_dtype, build_optimizer, build_teacher
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import TrainStep
from riftune.engine.weight import ConstantWeight
from riftune.models import build_classifier
from riftune.models.speed import compiled_training_forward, to_channels_last, use_channels_last
from riftune.regularizers import PretrainedView
from riftune.report import summary_table
from riftune.tuning import get as get_method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One variant's TrainStep on the shared model and batch."""

    def __init__(
        self, variant, model, method, images, labels, cache, ctx, amp_dtype, lr, compiled=False
    ):
        self.variant = variant
        reg = variant.build(model.num_features)
        reg.prepare(
            PretrainedView(
                model=model, train_embeddings=cache.cpu(), backbone_weights=method.backbone_weights
            )
        )
        reg.to(ctx.device)
        optimizer = build_optimizer(
            method, model, reg, lr=lr, head_lr=lr, weight_decay=0.01, strength=1.0
        )
        teacher = build_teacher(reg, method, model)
        self.step = TrainStep(
            model,
            reg,
            optimizer,
            warmup_cosine(optimizer, 0, 10**9),
            torch.amp.GradScaler(ctx.device.type, enabled=False),
            ctx,
            weight=ConstantWeight(1.0),
            grad_clip=1.0,
            amp_dtype=amp_dtype,
            reference_cache=cache if reg.reference == "cache" else None,
            teacher=teacher,
            backbone_weights=method.backbone_weights,
        )
        if compiled:  # --compile on: the step's forward and backward captured, as finetune's
            self.step.forward_model = compiled_training_forward(model, ctx.device)
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(images))
        self.device = ctx.device

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            _sync(self.device)
            start = time.perf_counter()
            self.step(self.images, self.labels, self.indices)
            _sync(self.device)
            times.append((time.perf_counter() - start) * 1000.0)
        return times


def _peak_memory(variants: list[Variant], build: Callable[[Variant], _Runner]) -> dict[str, float]:
    """Peak CUDA memory (MiB) of a few steps of each variant, built alone (not interleaved:
    memory is not noisy), so its teacher copy, optimizer state and activations all count."""
    peaks = {}
    for variant in variants:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        runner = build(variant)
        runner.run(3)
        peaks[variant.label] = torch.cuda.max_memory_allocated() / 2**20
        del runner
    return peaks


def bench_steps(args: argparse.Namespace, variants: list[Variant]) -> list[dict]:
    ctx = distributed.setup(args.device)
    amp_dtype = autocast_dtype(args.amp, ctx.device)
    torch.manual_seed(0)
    model = build_classifier(
        args.backbone, num_classes=2, pretrained=not args.no_pretrained, img_size=args.img_size
    ).to(ctx.device)
    method = get_method(args.method)()
    method.apply(model)
    model.to(ctx.device)
    if use_channels_last(args.channels_last, model, args.freeze_bn):
        to_channels_last(model)
    method.configure(model, 0, 1, freeze_bn=args.freeze_bn)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=ctx.device)
    labels = torch.randint(0, 2, (args.batch_size,), device=ctx.device)
    with (
        torch.no_grad(),
        torch.autocast(
            ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ),
    ):
        model.eval()
        # the cache of a 17-batch "training set" (at batch 32: 544 images, about BreastMNIST's
        # 546): this batch's images and noisy copies, so Σ₀ has the rank (543) that a
        # covariance of that many real images has, which sets RIFT's low-rank covariance cost
        noisy = [images] + [
            images + 0.1 * torch.randn_like(images) for _ in range(REFERENCE_BATCHES - 1)
        ]
        cache = torch.cat([model.embed(x) for x in noisy]).float()
        model.train()
        method.configure(model, 0, 1, freeze_bn=args.freeze_bn)

    def build(variant: Variant) -> _Runner:
        return _Runner(
            variant, model, method, images, labels, cache, ctx, amp_dtype, 1e-5,
            compiled=args.compile == "on",
        )  # fmt: skip

    runners = [build(v) for v in variants]
    for runner in runners:
        runner.run(args.warmup)
    plain, others = runners[0], runners[1:]
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    ratios: dict[str, list[float]] = {v.label: [] for v in variants}
    paired_plain: dict[str, list[float]] = {v.label: [] for v in variants}
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(others)
        for runner in others:
            block = {plain: [], runner: []}
            for i in range(args.steps):  # plain, variant, variant, plain, ...
                for r in (plain, runner) if i % 2 == 0 else (runner, plain):
                    block[r] += r.run(1)
            ratios[runner.variant.label].append(
                statistics.median(block[runner]) / statistics.median(block[plain])
            )
            times[runner.variant.label] += block[runner]
            times[plain.variant.label] += block[plain]
            paired_plain[runner.variant.label] += block[plain]
    plain_ms = statistics.median(times[plain.variant.label])
    alone = {  # the penalty's own forward + backward, free of the whole step's noise
        r.variant.label: penalty_cost(
            r.step.regularizer, step_inputs(r.step, r.images, r.indices), rounds=args.rounds * 2
        )
        * 1000.0
        / plain_ms
        for r in runners
    }
    del runners, plain, others
    peaks = _peak_memory(variants, build) if ctx.device.type == "cuda" else {}
    base = variants[0].label
    ratios[base] = [1.0]
    paired_plain[base] = times[base]
    rows = []
    for v in variants:
        row = {
            "variant": v.label,
            "step_ms": statistics.median(times[v.label]),
            "time_ratio": statistics.median(ratios[v.label]),
            "time_ratio_amortized": sum(times[v.label]) / sum(paired_plain[v.label]),
            "time_ratio_rounds": ratios[v.label],  # the spread shows the machine's noise
            "time_ratio_se": _standard_error(ratios[v.label]),
            "penalty_alone": alone[v.label],
        }
        if peaks:
            row["peak_mib"] = peaks[v.label]
            row["memory_ratio"] = peaks[v.label] / peaks[base]
        rows.append(row)
    return rows


def _standard_error(values: list[float]) -> float:
    """s/√k of k round ratios: the noise of their mean (about 1.25× that for their median)."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) / len(values) ** 0.5


def bench_reference_pass(args: argparse.Namespace, epoch_images: int, step_ms: float) -> dict:
    """Time of the pretrained pass over ``epoch_images`` images + RIFT's fit, vs one epoch."""
    ctx = distributed.setup(args.device)
    amp_dtype = autocast_dtype(args.amp, ctx.device)
    model = (
        build_classifier(
            args.backbone, num_classes=2, pretrained=not args.no_pretrained, img_size=args.img_size
        )
        .to(ctx.device)
        .eval()
    )
    images = torch.randn(args.eval_batch_size, 3, args.img_size, args.img_size, device=ctx.device)
    batches = -(-epoch_images // args.eval_batch_size)
    rift = regularizers.RIFT(model.num_features)
    _sync(ctx.device)
    start = time.perf_counter()
    with (
        torch.no_grad(),
        torch.autocast(
            ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ),
    ):
        chunks = [model.embed(images).float() for _ in range(batches)]
    rift.fit_reference(iter(chunks))
    _sync(ctx.device)
    seconds = time.perf_counter() - start
    epoch_seconds = step_ms / 1000.0 * (epoch_images // args.batch_size)
    return {
        "images": epoch_images,
        "reference_pass_s": seconds,
        "epoch_s": epoch_seconds,
        "fraction_of_epoch": seconds / epoch_seconds,
    }


def _time_penalty(fn: Callable[[], torch.Tensor], device, repeats: int) -> float:
    for _ in range(2):
        fn().backward()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn().backward()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def bench_scaling(args: argparse.Namespace) -> list[dict]:
    """The penalty's own forward + backward time (ms) against d (n fixed) and n (d fixed)."""
    ctx = distributed.setup(args.device)
    device = ctx.device
    grid = [(d, args.scaling_n) for d in args.scaling_d] + [
        (args.scaling_dim, n) for n in args.scaling_batch
    ]
    rows = []
    for d, n in grid:
        generator = torch.Generator().manual_seed(0)
        reference = torch.randn(4 * n + 8, d, generator=generator).to(device)
        z = torch.randn(n, d, generator=generator).to(device).requires_grad_(True)
        ref_batch = reference[:n]
        row = {"d": d, "n": n}
        for match in ("covariance", "paired"):
            for q_label, q_flags in q_variants():
                rank = q_flags.get("q_rank", regularizers.rift.DEFAULT_Q_RANK)
                rift = regularizers.RIFT(
                    d, match=match, q=q_flags["q"], q_rank=None if rank == "all" else rank
                ).to(device)
                rift.fit_reference(reference)
                inputs = (z,) if match == "covariance" else (z, ref_batch)
                call = functools.partial(rift, *inputs)
                row[f"{match} {q_label}"] = _time_penalty(call, device, args.scaling_repeats)
        rows.append(row)
    return rows


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--no-pretrained", action="store_true", help="random initialization")
    parser.add_argument("--method", default="full")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="convolution weights channels last, as riftune finetune's --channels-last",
    )
    parser.add_argument(
        "--compile",
        choices=("off", "on"),
        default="off",
        help="torch.compile every variant's training forward and backward, as finetune's "
        "--compile on (the warm-up steps compile)",
    )
    parser.add_argument(
        "--no-freeze-bn",
        dest="freeze_bn",
        action="store_false",
        help="train-mode BatchNorm, as finetune's --no-freeze-bn (the bench's only mode before "
        "2026-12)",
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="timed steps of a variant (and of plain) per round"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--variants", default="all", help="'all' or comma-separated labels' prefixes"
    )
    parser.add_argument(
        "--epoch-images", type=int, default=546, help="images of one epoch (BreastMNIST: 546)"
    )
    parser.add_argument(
        "--scaling-d",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[256, 512, 1024, 2048, 4096],
    )
    parser.add_argument(
        "--scaling-batch", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32, 128, 512]
    )
    parser.add_argument("--scaling-n", type=int, default=64, help="n of the d sweep")
    parser.add_argument("--scaling-dim", type=int, default=1280, help="d of the n sweep")
    parser.add_argument("--scaling-repeats", type=int, default=5)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: steps,reference,scaling"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")


def run_bench(args: argparse.Namespace) -> str:
    skip = set(filter(None, args.skip.split(",")))
    variants = default_variants()
    if args.variants != "all":
        wanted = [w.strip() for w in args.variants.split(",")]
        variants = [variants[0]] + [
            v for v in variants[1:] if any(v.label.startswith(w) for w in wanted)
        ]
    results: dict = {
        "config": {k: v for k, v in vars(args).items() if k not in ("handler", "command")}
    }
    if torch.cuda.is_available() and args.device != "cpu":
        results["device"] = torch.cuda.get_device_name()
    else:
        results["device"] = f"cpu ({torch.get_num_threads()} threads)"
    parts = []
    if "steps" not in skip:
        rows = bench_steps(args, variants)
        results["steps"] = rows
        columns = [
            ("variant", "variant", ""),
            ("step_ms", "step (ms)", ".1f"),
            ("time_ratio", "time / plain", ".3f"),
            ("time_ratio_se", "± s.e.", ".3f"),
            ("time_ratio_amortized", "amortized", ".3f"),
            ("penalty_alone", "penalty alone / plain step", ".4f"),
        ]
        if "peak_mib" in rows[0]:
            columns += [
                ("peak_mib", "peak MiB", ".0f"),
                ("memory_ratio", "memory / plain", ".3f"),
            ]
        parts.append(summary_table(rows, columns))
        if "reference" not in skip:
            results["reference_pass"] = bench_reference_pass(
                args, args.epoch_images, rows[0]["step_ms"]
            )
            r = results["reference_pass"]
            parts.append(
                f"reference pass over {r['images']} images: {r['reference_pass_s']:.2f} s = "
                f"{100 * r['fraction_of_epoch']:.1f}% of one training epoch ({r['epoch_s']:.2f} s)"
            )
    if "scaling" not in skip:
        rows = bench_scaling(args)
        results["scaling"] = rows
        keys = [k for k in rows[0] if k not in ("d", "n")]
        parts.append(
            summary_table(
                rows,
                [("d", "d", ""), ("n", "n", "")] + [(k, f"{k} (ms)", ".2f") for k in keys],
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return f"device: {results['device']}\n\n" + "\n\n".join(parts)
