"""L2-SP's own cost (forward + backward of the penalty alone) at a git revision against now.

Loads riftune/regularizers/l2sp.py as it was at REV next to the working tree's and times both
on the same models, interleaved in one process (medians over rounds of the mean CPU time per
call, one thread): EfficientNet-Lite0 (shipped weights) and, with random weights, ResNet-50
and ViT-B/16, whose ~150 parameter tensors each are what the penalty loops over:

    python benchmarks/l2sp_before_after.py REV [--rounds 5] [--calls 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from penalty_before_after import module_at

from riftune.models import build_classifier
from riftune.regularizers import l2sp as current
from riftune.regularizers.base import PretrainedView, StepInputs

BACKBONES = [  # (name, pretrained)
    ("efficientnet_lite0", True),
    ("timm:resnet50", False),
    ("timm:vit_base_patch16_224", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare with, e.g. HEAD~2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    before = module_at(args.rev, "riftune/regularizers/l2sp.py")
    print(f"L2-SP penalty forward + backward, CPU ms per call (1 thread), {args.rev} vs now")
    print(f"| backbone | tensors | parameters | {args.rev} | now | now / {args.rev} |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, pretrained in BACKBONES:
        model = build_classifier(name, num_classes=2, pretrained=pretrained, img_size=224)
        regs = {"before": before.L2SP(), "now": current.L2SP()}
        for reg in regs.values():
            reg.prepare(PretrainedView(model=model, train_embeddings=torch.zeros(1, 1)))
        with torch.no_grad():  # a model that has moved from its snapshot
            for param in model.parameters():
                param.add_(1e-3 * torch.randn_like(param))
        step = StepInputs(torch.zeros(2, model.num_features), model=model)
        times = {version: [] for version in regs}
        for _ in range(args.rounds):
            for version, reg in regs.items():
                reg.penalty(step).backward()  # warm-up
                start = time.process_time()
                for _ in range(args.calls):
                    reg.penalty(step).backward()
                times[version].append((time.process_time() - start) / args.calls * 1000)
        old, new = (statistics.median(times[v]) for v in ("before", "now"))
        tensors = sum(1 for _ in model.parameters())
        count = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {tensors} | {count:.1f}M | {old:.1f} | {new:.1f} | {new / old:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
