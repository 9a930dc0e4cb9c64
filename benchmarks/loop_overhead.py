"""The training loop's own cost per step, `riftune finetune` at a git revision against the working
tree (issue 28's first CPU target: at most 1 ms a step beyond the model's forward and backward).

With a model that costs almost nothing (timm's ``test_convnext`` with random weights), a step of
the loop is mostly the loop itself: the batch (gather, augmentation, normalization), the step's
bookkeeping, λ, the logs. Each round runs, in child processes, in the order old, new, new, old
(alternating, so the machine's drift hits both alike):

- the loop: ``riftune finetune`` with that model on BreastMNIST at 32 px (its smallest input; the
  default recipe otherwise,
  augmentation on); its per-step cost is the ``train_steps`` phase of metrics.json over the
  number of steps (everything inside an epoch's loop, the data and the logs included);
- the bare step: the same model's forward, cross-entropy, backward, gradient clipping and AdamW
  update on batches made beforehand (channels last and frozen BatchNorm, as the loop trains), in
  this process's torch, the same for both codes.

The loop's overhead is the loop's per-step cost minus the bare step's (medians over rounds):

    python benchmarks/loop_overhead.py REV [--rounds 5] [--epochs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
MODEL = "timm:test_convnext"


def loop_ms_per_step(code: Path, epochs: int, out: Path) -> float:
    """One ``riftune finetune`` run of the riftune in ``code``: its train_steps phase per step."""
    flags = ["--data", "breastmnist", "--backbone", MODEL, "--no-pretrained", "--img-size", "32", "--epochs", str(epochs),
             "--out", str(out), "--overwrite", "--quiet", "--no-robustness"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(code))
    subprocess.run([sys.executable, "-m", "riftune", "finetune", *flags], check=True, env=env,
                   cwd=code)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    steps = sum(1 for _ in (out / "steps.csv").open()) - 1
    return 1000.0 * metrics["timing"]["train_steps"] / steps


def bare_ms_per_step(steps: int = 200, batch: int = 32) -> float:
    """The median of ``steps`` bare training steps of the same model on ready batches."""
    from riftune.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier(MODEL, 2, pretrained=False, img_size=32)
    model = model.to(memory_format=torch.channels_last).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"old": [], "new": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.rev], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
        try:
            for round_ in range(args.rounds):
                order = [("old", old), ("new", REPO)]
                for name, code in order if round_ % 2 == 0 else order[::-1]:
                    results[name].append(loop_ms_per_step(code, args.epochs, Path(tmp) / name))
                results["bare"].append(bare_ms_per_step())
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           check=True)  # fmt: skip
    bare = statistics.median(results["bare"])
    lines = [
        f"# python benchmarks/loop_overhead.py {args.rev} --rounds {args.rounds} "
        f"--epochs {args.epochs}",
        f"# OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, model {MODEL} (random weights), "
        "BreastMNIST at 32 px, batch 32, augmentation on",
        "",
        "| ms per step (median over rounds) | old | new |",
        "|---|---:|---:|",
        f"| the loop (train_steps / steps) | {statistics.median(results['old']):.3f} | "
        f"{statistics.median(results['new']):.3f} |",
        f"| the bare step (forward, backward, AdamW) | {bare:.3f} | {bare:.3f} |",
        f"| the loop's overhead | {statistics.median(results['old']) - bare:.3f} | "
        f"{statistics.median(results['new']) - bare:.3f} |",
        "",
        "per round: " + json.dumps({k: [round(v, 3) for v in vs] for k, vs in results.items()}),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
