"""Adaptive worst-case sharpness: how much the loss can rise within a small ball around the weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from riftune.distributed import all_reduce_sum, in_process_group
from riftune.models.modes import eval_mode


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    rho: float = 0.05,
    steps: int = 3,
    adaptive: bool = True,
    seed: int = 0,
) -> float:
    r"""Adaptive ℓ2 worst-case sharpness, averaged over fixed evaluation batches.

    For each batch B, with w the trainable parameters and T = diag(|w|) (``adaptive``, Kwon et
    al., "ASAM", ICML 2021) or T = I (the SAM neighbourhood, Foret et al., ICLR 2021):

    .. math::

        S_B = \max_{\lVert T^{-1}\varepsilon\rVert_2 \le \rho} L_B(w + \varepsilon) - L_B(w),
        \qquad S = \frac{1}{|\mathcal B|}\sum_{B} S_B

    i.e. the worst-case m-sharpness of Andriushchenko et al. ("A Modern Look at the
    Relationship between Sharpness and Generalization", ICML 2023) with m the batch size.
    Writing ε = Tδ, the inner maximum is approximated by ``steps`` steps of projected,
    normalized gradient ascent on δ from δ = 0:
    δ ← Π_ρ(δ + ρ·g_δ/‖g_δ‖), g_δ = T∇_w L_B(w + Tδ), Π_ρ the projection onto ‖δ‖₂ ≤ ρ. The
    first step is ASAM's (SAM's) perturbation. S_B is the largest increase over every point
    visited, δ = 0 included, so S ≥ 0 and S = 0 at ρ = 0. Parameters equal to 0 are not
    perturbed when ``adaptive`` (their neighbourhood has width 0). Where the gradient vanishes
    the step follows a random direction drawn from a generator seeded with ``seed``.

    The model runs in eval mode throughout (BatchNorm uses its running statistics, dropout is
    off), only parameters with ``requires_grad`` are perturbed, ``.grad`` fields are not
    touched, and afterwards every parameter is restored bit for bit and every submodule's mode
    is as before. Under an initialized ``torch.distributed`` process group each rank passes its
    own batches and S is the mean over all ranks' batches. Pass the bare module, not a
    ``DistributedDataParallel`` wrapper.

    Args:
        model: any module.
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss L_B (moving the batch to the
            model's device is its job).
        batches: the fixed evaluation batches, each used once.
        rho: radius ρ ≥ 0 of the ball.
        steps: ascent steps per batch (each one forward and backward pass, plus one forward).
        adaptive: T = diag(|w|) if ``True``, else T = I.
        seed: seeds the random directions.

    Returns:
        S, a float ≥ 0.
    """
    if rho < 0 or steps < 0:
        raise ValueError(f"sharpness needs rho ≥ 0 and steps ≥ 0; got rho={rho}, steps={steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("sharpness: the model has no parameter with requires_grad=True")
    origin = [p.detach().clone() for p in params]
    scale = [w.abs() if adaptive else torch.ones_like(w) for w in origin]
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    try:
        with eval_mode(model):
            for batch in batches:
                total += _batch_sharpness(
                    model, loss_fn, batch, params, origin, scale, rho, steps, generator
                )
                count += 1
    finally:
        with torch.no_grad():
            for p, w in zip(params, origin, strict=True):
                p.copy_(w)
    if in_process_group():
        total_t, count_t = all_reduce_sum(
            [torch.tensor(total, dtype=torch.float64), torch.tensor(float(count))]
        )
        total, count = float(total_t), round(float(count_t))
    if count == 0:
        raise ValueError("sharpness got no batches; pass at least one evaluation batch")
    return total / count


def _batch_sharpness(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    params: list[nn.Parameter],
    origin: list[torch.Tensor],
    scale: list[torch.Tensor],
    rho: float,
    steps: int,
    generator: torch.Generator,
) -> float:
    """max over the visited δ of L_B(w + Tδ) − L_B(w); the weights are w again on return."""
    if steps == 0:
        return 0.0
    delta = [torch.zeros_like(w) for w in origin]
    base = worst = None
    for _ in range(steps):
        loss = loss_fn(model, batch)
        value = float(loss.detach())
        if base is None:
            base = worst = value
        elif value > worst:
            worst = value
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        direction = [
            torch.zeros_like(t) if g is None else g.detach() * t
            for g, t in zip(grads, scale, strict=True)
        ]
        norm = _norm(direction)
        if norm == 0 or not math.isfinite(norm):
            direction = [torch.randn(t.shape, generator=generator).to(t) for t in scale]
            norm = _norm(direction)
        with torch.no_grad():
            for d, g in zip(delta, direction, strict=True):
                d.add_(g, alpha=rho / norm)
            length = _norm(delta)
            if length > rho:
                for d in delta:
                    d.mul_(rho / length)
            for p, w, t, d in zip(params, origin, scale, delta, strict=True):
                p.copy_(w + t * d)
    with torch.no_grad():
        value = float(loss_fn(model, batch))
        for p, w in zip(params, origin, strict=True):
            p.copy_(w)
    if value > worst:
        worst = value
    return worst - base


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))
