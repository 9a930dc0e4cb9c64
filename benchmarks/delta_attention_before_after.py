"""DELTA's channel-attention estimate (the ablation scores) at a git revision against now.

Loads riftune/regularizers/delta.py as it was at REV (the attention code lived there then) next
to the working tree's riftune/regularizers/delta_attention.py and runs both
``ablation_scores`` on the same images, interleaved in one process (CPU seconds, one thread,
median over rounds): EfficientNet-Lite0 with its shipped weights, DELTA's default layers, a
linear probe on the pretrained embeddings of the images, the first IMAGES BreastMNIST
training images in one batch. Also prints the largest difference between the two scores:

    python benchmarks/delta_attention_before_after.py [REV] [--images 8] [--img-size 64]
        [--rounds 2] [--channels-last]

The model is stored NCHW unless ``--channels-last`` (as ``riftune finetune`` stores it with
its default frozen BatchNorm).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from penalty_before_after import module_at
from torch.utils.data import DataLoader, Subset

from riftune.data import load_dataset
from riftune.models import build_classifier
from riftune.models.feature_maps import default_layers
from riftune.models.speed import to_channels_last
from riftune.regularizers import delta_attention as current
from riftune.regularizers.delta_attention import fit_linear_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="1a9f34c", help="git revision to compare with")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="store the model NHWC")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    before = module_at(args.rev, "riftune/regularizers/delta.py")
    model = build_classifier("efficientnet_lite0", num_classes=2)
    if args.channels_last:
        to_channels_last(model)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
    images, labels, _ = next(
        iter(DataLoader(Subset(data.train, range(args.images)), batch_size=args.images))
    )
    with torch.no_grad():
        probe = fit_linear_probe(model.eval().embed(images), labels)
    layers = default_layers(model.backbone)
    versions = {args.rev: before.ablation_scores, "now": current.ablation_scores}
    times: dict[str, list[float]] = {name: [] for name in versions}
    scores = {}
    for round_index in range(args.rounds):
        order = list(versions) if round_index % 2 == 0 else list(versions)[::-1]
        for name in order:
            start = time.process_time()
            scores[name] = versions[name](model.backbone, layers, probe, [(images, labels)])
            times[name].append(time.process_time() - start)
    old, new = (statistics.median(times[name]) for name in versions)
    difference = max(
        float((a - b).abs().max()) for a, b in zip(scores[args.rev], scores["now"], strict=True)
    )
    largest = max(float(s.abs().max()) for s in scores[args.rev])
    channels = sum(s.shape[0] for s in scores["now"])
    print(
        f"DELTA ablation scores, EfficientNet-Lite0, {args.images} BreastMNIST images at "
        f"{args.img_size} px, model {'NHWC' if args.channels_last else 'NCHW'}, layers "
        f"{', '.join(layers)} ({channels} channels), CPU seconds "
        f"(1 thread), median of {args.rounds} interleaved rounds"
    )
    print(f"| {args.rev} | now | now / {args.rev} | max abs difference | max abs score |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {old:.1f} | {new:.1f} | {new / old:.3f} | {difference:.2e} | {largest:.3f} |")


if __name__ == "__main__":
    main()
