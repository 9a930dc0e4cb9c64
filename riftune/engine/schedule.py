"""Learning-rate schedule: linear warmup, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplier m(t) on every group's base lr at optimizer step t (0-based):

    m(t) = (t + 1) / warmup_steps                              for t < warmup_steps
    m(t) = ½ (1 + cos(π (t − warmup_steps) / (total − warmup_steps)))  afterwards
    """
    warmup_steps = min(max(warmup_steps, 0), total_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
