"""Evaluation forward passes under ``torch.inference_mode`` against ``torch.no_grad``.

EfficientNet-Lite0 (shipped weights, channels last, eval mode) over a BreastMNIST split in
batches, as ``riftune.metrics.embeddings.collect`` runs them; the two modes alternate
(no_grad, inference, inference, no_grad, ...) for ROUNDS rounds, and the median of the
per-round ratios is printed with every round's, and whether the outputs are equal:

    python benchmarks/inference_mode.py [--img-size 28] [--split train] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from riftune.data import load_dataset
from riftune.models import build_classifier
from riftune.models.speed import channels_last_input, to_channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = to_channels_last(build_classifier("efficientnet_lite0", num_classes=2)).eval()
    cfg = model.pretrained_cfg
    data = load_dataset("breastmnist", img_size=args.img_size, mean=cfg["mean"], std=cfg["std"])
    split = getattr(data, args.split)
    batches = [channels_last_input(b[0]) for b in DataLoader(split, batch_size=args.batch_size)]
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}

    def timed(mode: str) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with modes[mode]():
            logits = torch.cat([model(images).logits for images in batches])
        return time.perf_counter() - start, logits.clone()

    timed("no_grad")  # warm-up
    ratios, seconds = [], {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        order = ["no_grad", "inference_mode"][:: 1 if round_ % 2 == 0 else -1]
        times, outputs = {}, {}
        for mode in order:
            times[mode], outputs[mode] = timed(mode)
            seconds[mode].append(times[mode])
        ratios.append(times["inference_mode"] / times["no_grad"])
        assert torch.equal(outputs["no_grad"], outputs["inference_mode"]), "outputs differ"
    print(
        f"EfficientNet-Lite0, {len(split)} BreastMNIST {args.split} images at {args.img_size} px, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    for mode in modes:
        print(f"{mode}: median {statistics.median(seconds[mode]):.3f} s per pass")
    print(
        f"inference_mode / no_grad: median {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); outputs equal in every round"
    )


if __name__ == "__main__":
    main()
