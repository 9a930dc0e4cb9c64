"""RIFT's own cost (forward + backward of the penalty alone) at a git revision against now.

Loads riftune/regularizers/rift.py as it was at REV next to the working tree's, builds every
variant in both, and times them interleaved in one process (medians over rounds of the mean
CPU time per call, one thread), so the ratio new/old is free of the machine's drift:

    python benchmarks/penalty_before_after.py REV [--dim 1280] [--batch 32] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import riftune.regularizers.base as base
from riftune.regularizers import rift as current

VARIANTS = [  # (match, q, stats)
    ("covariance", "identity", "batch"),
    ("covariance", "learned", "batch"),
    ("covariance", "optimal", "batch"),
    ("covariance", "identity", "ema"),
    ("covariance", "learned", "ema"),
    ("covariance", "optimal", "ema"),
    ("paired", "identity", "batch"),
    ("paired", "learned", "batch"),
    ("paired", "optimal", "batch"),
]


def module_at(rev: str, path: str = "riftune/regularizers/rift.py"):
    """``path`` (a regularizer's module) at ``rev``, imported as a separate module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    copy = Path(tempfile.mkdtemp()) / f"before_{Path(path).name}"
    copy.write_text(source)
    spec = importlib.util.spec_from_file_location(copy.stem, copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules[copy.stem] = module  # dataclasses look their module up while being defined
    register = base.register
    base.register = lambda cls: cls  # the regularizer's name is registered already
    try:
        spec.loader.exec_module(module)
    finally:
        base.register = register
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare with, e.g. HEAD~2")
    parser.add_argument("--dim", type=int, default=1280, help="d (EfficientNet-Lite0: 1280)")
    parser.add_argument("--batch", type=int, default=32, help="n")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--calls", type=int, default=10, help="timed calls per round (EMA+optimal: one refresh)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, n = args.dim, args.batch
    reference = torch.randn(4 * d, d) @ (torch.randn(d, d) / d**0.5)  # a correlated spectrum
    z0 = torch.randn(n, d)
    penalties = {}
    for version, module in (("before", module_at(args.rev)), ("now", current)):
        for match, q, stats in VARIANTS:
            reg = module.RIFT(d, match=match, q=q, stats=stats)
            if match == "covariance":
                reg.fit_reference(reference)
            penalties[(version, match, q, stats)] = reg
    times = {key: [] for key in penalties}
    for _ in range(args.rounds):
        for key, reg in penalties.items():
            z = z0.clone().requires_grad_()
            inputs = (z, reference[:n]) if key[1] == "paired" else (z,)
            reg(*inputs).backward()  # warm-up
            start = time.process_time()
            for _ in range(args.calls):
                reg(*inputs).backward()
            times[key].append((time.process_time() - start) / args.calls * 1000)
    print(f"RIFT penalty forward + backward, d = {d}, n = {n}, CPU ms per call (1 thread)")
    print(f"| variant | {args.rev} | now | now / {args.rev} |\n|---|---:|---:|---:|")
    for match, q, stats in VARIANTS:
        before = statistics.median(times[("before", match, q, stats)])
        now = statistics.median(times[("now", match, q, stats)])
        label = f"{match} q={q}" + (f" stats={stats}" if match == "covariance" else "")
        print(f"| {label} | {before:.1f} | {now:.1f} | {now / before:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
