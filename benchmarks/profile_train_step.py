"""Profile of the default ``riftune finetune`` training step on the CPU: what bounds the loop.

The step of the current defaults (EfficientNet-Lite0 with shipped weights, ``--method full``,
``--reg none``, BreastMNIST at 128 px, batch 32, AdamW at lr 1e-4 / head 1e-3, weight decay
0.01, gradient clipping 1.0, no AMP on the CPU) through the engine's own TrainStep, on real
shuffled training batches. After WARMUP untimed steps, STEPS steps run under torch.profiler;
the loader's share is timed apart. Writes the ops with the most self CPU time:

    python benchmarks/profile_train_step.py [--steps 8] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from riftune import distributed
from riftune.data import load_dataset
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import TrainStep
from riftune.engine.weight import ConstantWeight
from riftune.models import build_classifier
from riftune.regularizers.base import NoRegularizer
from riftune.tuning import get as get_method

WARMUP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
    method = get_method("full")()
    method.apply(model)
    method.configure(model, 0, 1)
    optimizer = torch.optim.AdamW(
        method.param_groups(model, backbone_lr=1e-4, head_lr=1e-3), weight_decay=0.01
    )
    step = TrainStep(
        model,
        NoRegularizer(),
        optimizer,
        warmup_cosine(optimizer, 0, 10**6),
        torch.amp.GradScaler("cpu", enabled=False),
        distributed.setup("cpu"),
        weight=ConstantWeight(0.0),
        grad_clip=1.0,
        amp_dtype=None,
    )
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)
    loading = 0.0

    def next_batch():
        nonlocal batches, loading
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loading += time.perf_counter() - start
        return batch

    for _ in range(WARMUP):
        step(*next_batch())
    loading = 0.0
    start = time.perf_counter()
    cpu_start = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(*next_batch())
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    images = args.steps * args.batch_size
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    header = [
        f"# command: python benchmarks/profile_train_step.py --steps {args.steps} "
        f"--threads {args.threads} --img-size {args.img_size} --batch-size {args.batch_size}",
        f"# torch {torch.__version__}, {args.threads} thread(s), shared 2-core CPU machine; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"# {args.steps} steps of {args.batch_size} images after {WARMUP} warm-up steps: "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU of this process "
        f"({images / wall:.1f} images/s wall, {images / cpu:.1f} images/s per CPU second), "
        f"data loading {loading:.2f} s ({loading / wall:.1%} of wall); profiler overhead included",
    ]
    text = "\n".join(header) + "\n\n" + table
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
