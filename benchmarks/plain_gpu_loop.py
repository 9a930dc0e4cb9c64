"""The practical limit for `riftune finetune` on a GPU (issue 28): a minimal plain training loop
with its data already on the device.

EfficientNet-Lite0 with its shipped ImageNet weights, PneumoniaMNIST's training images resized
once to SIZE px and held on the GPU as uint8, batches drawn by a seeded permutation, normalized
on the device, bf16 autocast, cross-entropy, AdamW: nothing else (no augmentation, logs,
evaluation or checkpoints). Prints the training images per second over the timed steps (one
synchronisation at the end, none inside):

    python benchmarks/plain_gpu_loop.py [--img-size 224] [--batch-size 32] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from riftune.data import load_dataset
from riftune.models import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    model = build_classifier("efficientnet_lite0", 2, pretrained=True, img_size=args.img_size)
    model = model.to(device, memory_format=torch.channels_last).train()
    data = load_dataset("pneumoniamnist", img_size=args.img_size)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    normalize = data.train.normalize
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).to(device)

    def step(number: int) -> None:
        start = (number * args.batch_size) % (len(order) - args.batch_size)
        index = order[start : start + args.batch_size]
        batch = normalize(images[index]).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(batch).logits
        F.cross_entropy(logits.float(), labels[index]).backward()
        optimizer.step()

    for number in range(args.warmup):
        step(number)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for number in range(args.steps):
        step(number)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"plain loop, data on the GPU: {args.steps * args.batch_size / seconds:.0f} images/s "
        f"({1000 * seconds / args.steps:.2f} ms a step, batch {args.batch_size}, "
        f"{args.img_size} px, bf16)"
    )


if __name__ == "__main__":
    main()
