"""Evaluation against a bare inference-mode forward at the same batch size (issue 28's target:
validation, test and transfer evaluation at 90% or more of the bare forward's images/s).

EfficientNet-Lite0 with its shipped ImageNet weights, laid out as `riftune finetune` trains it
(channels last), on PneumoniaMNIST's validation and test splits and BreastMNIST's train and test
splits (the transfer evaluation's four passes per model) at 28 px. Interleaved rounds time

- the engine's evaluation of a split (:func:`riftune.engine.evaluation.evaluate_split`: the
  forward over the split's batches, gathering, accuracy, AUC, ECE, loss and CKA to the
  pretrained embeddings), and the transfer evaluation
  (:func:`riftune.engine.evaluation.transfer_metrics`: loading the other dataset, two models'
  embeddings of its splits, k-NN and a linear probe);
- the bare forward: ``model(images)`` under ``torch.inference_mode()`` over the same images in
  batches of the same size, already normalized;

and prints images per second and their ratio (medians over rounds):

    python benchmarks/eval_throughput.py [--rounds 5] [--batch-size 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from riftune.config import RunConfig
from riftune.data import eval_loader, load_dataset
from riftune.distributed import DistributedContext
from riftune.engine.evaluation import evaluate_split, transfer_metrics
from riftune.metrics import collect
from riftune.models import build_classifier
from riftune.models.speed import to_channels_last

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def bare_forward_seconds(model, images: torch.Tensor, batch_size: int) -> float:
    """Seconds of ``model`` over ``images`` (already normalized) under inference mode."""
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(images), batch_size):
            model(images[begin : begin + batch_size])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = to_channels_last(build_classifier("efficientnet_lite0", 2, img_size=28)).eval()
    reference = to_channels_last(build_classifier("efficientnet_lite0", 2, img_size=28)).eval()
    norm = model.pretrained_cfg
    data = load_dataset("pneumoniamnist", img_size=28, mean=norm["mean"], std=norm["std"])
    other = load_dataset("breastmnist", img_size=28, mean=norm["mean"], std=norm["std"])
    config = RunConfig.from_dict(
        {"evaluation": {"transfer_data": "breastmnist", "eval_batch_size": args.batch_size}}
    )
    splits = {"val": data.val, "test": data.test}
    pretrained = {
        name: collect(reference, eval_loader(split, args.batch_size, CPU), "cpu")
        for name, split in splits.items()
    }
    normalized = {name: split.batch(range(len(split)))[0] for name, split in splits.items()}
    transfer_images = torch.cat(
        [other.train.batch(range(len(other.train)))[0], other.test.batch(range(len(other.test)))[0]]
    )
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, split in splits.items():
            start = time.perf_counter()
            evaluate_split(model, eval_loader(split, args.batch_size, CPU), pretrained[name], CPU,
                           None)  # fmt: skip
            times.setdefault(f"{name} evaluation", []).append(time.perf_counter() - start)
            times.setdefault(f"{name} bare", []).append(
                bare_forward_seconds(model, normalized[name], args.batch_size)
            )
        start = time.perf_counter()
        transfer_metrics(model, reference, config, CPU, None)
        times.setdefault("transfer evaluation", []).append(time.perf_counter() - start)
        bare = [
            bare_forward_seconds(net, transfer_images, args.batch_size)
            for net in (model, reference)
        ]
        times.setdefault("transfer bare", []).append(sum(bare))
    images = {"val": len(data.val), "test": len(data.test), "transfer": 2 * len(transfer_images)}
    lines = [
        f"# python benchmarks/eval_throughput.py --rounds {args.rounds} --batch-size "
        f"{args.batch_size}",
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, threads "
        f"{torch.get_num_threads()}, EfficientNet-Lite0 (shipped weights), 28 px, channels last",
        "",
        "| pass | images | evaluation images/s | bare forward images/s | evaluation / bare |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, count in images.items():
        evaluation = count / statistics.median(times[f"{name} evaluation"])
        bare = count / statistics.median(times[f"{name} bare"])
        lines.append(
            f"| {name} | {count} | {evaluation:.0f} | {bare:.0f} | {evaluation / bare:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
