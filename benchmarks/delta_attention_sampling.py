"""How far DELTA's channel attention from N images sits from the whole training set's.

Ablation scores (``riftune.regularizers.delta_attention.ablation_scores``) of EfficientNet-Lite0
(shipped weights, channels last, DELTA's default layers, a linear probe on the pretrained
embeddings of the whole training split, as ``Delta.prepare`` fits it) for every BreastMNIST
training image, in groups of 8. For N images (200 random draws of N/8 groups) it prints, per layer, the mean
over draws of the total variation ½Σ|w_N − w_all| and of the median relative error per channel
|w_N / w_all − 1|, against how far the whole set's attention is from uniform weights. Last, a
first-order estimate of the same scores, −Σ_positions ∂CE/∂F_c · F_c (all channels from one
backward pass per batch), against the ablation's: rank correlation and total variation.

    python benchmarks/delta_attention_sampling.py [--img-size 28] > FILE
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from riftune.data import load_dataset
from riftune.metrics.embeddings import collect_embeddings
from riftune.models import build_classifier
from riftune.models.feature_maps import default_layers, resolve_layer
from riftune.models.modes import eval_mode
from riftune.models.speed import channels_last_input, to_channels_last
from riftune.regularizers.delta_attention import (
    ablation_scores,
    attention_from_scores,
    fit_linear_probe,
)

GROUP, DRAWS = 8, 200


def first_order_scores(backbone, layers, head, batches) -> list[torch.Tensor]:
    """(1/N) Σ_i −⟨∂CE_i/∂F_{l,c}(x_i), F_{l,c}(x_i)⟩ per layer and channel, float64."""
    modules = [resolve_layer(backbone, name) for name in layers]
    sums, count = None, 0
    with eval_mode(backbone), torch.enable_grad():
        for images, labels, *_ in batches:
            outputs: list[torch.Tensor] = []
            keep = outputs.append
            handles = [m.register_forward_hook(lambda m, i, o, keep=keep: keep(o)) for m in modules]
            try:
                loss = F.cross_entropy(head(backbone(channels_last_input(images))), labels,
                                       reduction="sum")  # fmt: skip
            finally:
                for handle in handles:
                    handle.remove()
            grads = torch.autograd.grad(loss, outputs)
            parts = [
                -(g * a.detach()).flatten(2).sum(2).sum(0).double()
                for g, a in zip(grads, outputs, strict=True)
            ]
            sums = parts if sums is None else [s + p for s, p in zip(sums, parts, strict=True)]
            count += images.shape[0]
    return [s / count for s in sums]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=28)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = to_channels_last(build_classifier("efficientnet_lite0", num_classes=2))
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
    train = collect_embeddings(model.embed, DataLoader(data.train, batch_size=256), "cpu")
    probe = fit_linear_probe(train.embeddings, train.labels)
    layers = default_layers(model.backbone)
    whole = Subset(data.train, range(len(data.train) // GROUP * GROUP))
    loader = DataLoader(whole, batch_size=GROUP)
    groups = [ablation_scores(model.backbone, layers, probe, [batch[:2]]) for batch in loader]

    def attention(picked: list[int]) -> list[torch.Tensor]:
        return [
            attention_from_scores(torch.stack([groups[g][i] for g in picked]).mean(0))
            for i in range(len(layers))
        ]

    every = attention(list(range(len(groups))))
    per_layer = ", ".join(layers)
    lines = [
        f"DELTA attention from N random BreastMNIST training images against all {len(whole)} "
        f"(EfficientNet-Lite0, {args.img_size} px, {DRAWS} draws of N/{GROUP} groups; per layer: "
        f"{', '.join(layers)})",
        "",
        "all images against uniform weights: total variation "
        + ", ".join(f"{total_variation(w, torch.full_like(w, 1 / len(w))):.3f}" for w in every)
        + "; largest / smallest weight "
        + ", ".join(f"{float(w.max() / w.min()):.2f}" for w in every),
        "",
        f"| N | mean total variation ({per_layer}) | mean median relative error ({per_layer}) |",
        "|---:|---|---|",
    ]
    draws = random.Random(0)
    for n in (16, 32, 64, 128):
        tv = [[] for _ in layers]
        rel = [[] for _ in layers]
        for _ in range(DRAWS):
            for i, w in enumerate(attention(draws.sample(range(len(groups)), n // GROUP))):
                tv[i].append(total_variation(w, every[i]))
                rel[i].append(float((w / every[i] - 1).abs().median()))
        lines.append(
            f"| {n} | {', '.join(f'{statistics.mean(t):.3f}' for t in tv)} | "
            f"{', '.join(f'{statistics.mean(r):.3f}' for r in rel)} |"
        )
    ablation = [torch.stack([g[i] for g in groups]).mean(0) for i in range(len(layers))]
    first_order = first_order_scores(
        model.backbone, layers, probe, DataLoader(whole, batch_size=64)
    )
    lines += [
        "",
        f"first-order estimate over all {len(whole)} images against the ablation: rank correlation "
        + ", ".join(
            f"{rank_correlation(a, b):.2f}" for a, b in zip(first_order, ablation, strict=True)
        )
        + "; total variation of the attention "
        + ", ".join(
            f"{total_variation(attention_from_scores(a), w):.3f}"
            for a, w in zip(first_order, every, strict=True)
        ),
    ]
    print(f"# python benchmarks/delta_attention_sampling.py --img-size {args.img_size}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
