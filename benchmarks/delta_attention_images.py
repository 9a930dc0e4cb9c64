"""How many training images DELTA's channel attention needs: subsets against the 128-image default.

Computes the ablation scores of EfficientNet-Lite0 (shipped weights, default DELTA layers, a
linear probe on the pretrained embeddings of the whole training split) on the first 128
BreastMNIST training images in groups of 8, then for the first N images (N = 8, 16, 32, 64)
compares the attention weights with those of all 128 (as ``Delta.prepare`` computes them):
the largest ratio w_N / w_128 over all channels, and over 200 random draws of N/8 groups the
median and 95th percentile of that ratio's distance from 1:

    python benchmarks/delta_attention_images.py [--img-size 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch
from torch.utils.data import DataLoader

from riftune.data import load_dataset
from riftune.metrics.embeddings import collect_embeddings
from riftune.models import build_classifier
from riftune.models.feature_maps import default_layers
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    fit_linear_probe,
)

GROUP, IMAGES = 8, 128


def worst_ratio(groups: list[list[torch.Tensor]], picked: list[int], full: list[torch.Tensor]):
    """max over layers and channels of |w_subset / w_full − 1|."""
    worst = 0.0
    for layer, reference in enumerate(full):
        scores = torch.stack([groups[g][layer] for g in picked]).mean(0)
        ratio = attention_from_scores(scores) / reference
        worst = max(worst, float((ratio - 1).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2)
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
    train = collect_embeddings(model.embed, DataLoader(data.train, batch_size=64), "cpu")
    probe = fit_linear_probe(train.embeddings, train.labels)
    layers = default_layers(model.backbone)
    loader = DataLoader(torch.utils.data.Subset(data.train, range(IMAGES)), batch_size=GROUP)
    groups = [ablation_scores(model.backbone, layers, probe, [batch]) for batch in loader]
    full = [
        attention_from_scores(torch.stack([g[i] for g in groups]).mean(0))
        for i in range(len(layers))
    ]
    lines = [
        f"DELTA attention from the first N BreastMNIST training images against N = {IMAGES} "
        f"(EfficientNet-Lite0, {args.img_size} px, layers {', '.join(layers)})",
        "| N | first N: max abs(w_N / w_128 - 1) | random N: median | random N: 95th pct |",
        "|---:|---:|---:|---:|",
    ]
    draws = random.Random(0)
    for n in (8, 16, 32, 64):
        k = n // GROUP
        first = worst_ratio(groups, list(range(k)), full)
        sampled = sorted(
            worst_ratio(groups, draws.sample(range(len(groups)), k), full) for _ in range(200)
        )
        lines.append(
            f"| {n} | {first:.3f} | {statistics.median(sampled):.3f} | {sampled[189]:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(
                f"# python benchmarks/delta_attention_images.py --img-size "
                f"{args.img_size}\n{text}\n"
            )


if __name__ == "__main__":
    main()
