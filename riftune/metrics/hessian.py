"""The dominant eigenvalue of the loss Hessian, by power iteration on Hessian-vector products."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from riftune.distributed import all_reduce_sum, in_process_group
from riftune.models.modes import eval_mode


def hessian_top_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> float:
    r"""Top eigenvalue of ∇²L(w) over the trainable parameters, by power iteration.

    L is the mean of ``loss_fn`` over ``batches`` (each batch weighs the same; under an
    initialized ``torch.distributed`` process group, over all ranks' batches, with the
    Hessian-vector products summed across ranks). As in PyHessian (Yao et al., "PyHessian:
    Neural Networks Through the Lens of the Hessian", IEEE BigData 2020), starting from a
    standard normal v₀ drawn from a generator seeded with ``seed`` and normalized,

    .. math::

        \lambda_t = v_t^\top H v_t, \qquad v_{t+1} = \frac{H v_t}{\lVert H v_t\rVert_2},

    with Hv = ∇_w (∇_w L · v) computed by double back-propagation (the Hessian is never
    formed), stopping after ``iters`` products or once
    |λ_t − λ_{t−1}| < tol·(|λ_{t−1}| + 10⁻⁶). Power iteration converges to the eigenvalue of
    largest magnitude, returned with its sign (at a minimum that is the largest one); when the
    two largest magnitudes are close it converges slowly.

    The model runs in eval mode (BatchNorm with running statistics, no dropout); only
    parameters with ``requires_grad`` count; ``.grad`` fields and the weights are untouched and
    every submodule's mode is restored. Pass the bare module, not a DDP wrapper.

    Args:
        model: any module whose forward supports double backward.
        loss_fn: ``loss_fn(model, batch)`` returns a scalar loss.
        batches: the fixed batches; they are iterated once per power-iteration step.
        iters: the most Hessian-vector products (each is a pass over ``batches``).
        tol: relative change of λ at which to stop.
        seed: seeds the start vector.

    Returns:
        λ, the estimated eigenvalue of largest magnitude.
    """
    if iters < 1:
        raise ValueError(f"hessian_top_eigenvalue needs iters ≥ 1; got {iters}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "hessian_top_eigenvalue: the model has no parameter with requires_grad=True"
        )
    batches = list(batches)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    v = _scaled(v, 1 / _norm(v))
    eigenvalue = math.nan
    with eval_mode(model):
        for _ in range(iters):
            hv = _hessian_vector_product(model, loss_fn, batches, params, v)
            previous = eigenvalue
            eigenvalue = sum(
                float((h.double() * x.double()).sum()) for h, x in zip(hv, v, strict=True)
            )
            norm = _norm(hv)
            if norm == 0:
                break
            v = _scaled(hv, 1 / norm)
            if abs(eigenvalue - previous) < tol * (abs(previous) + 1e-6):
                break
    return eigenvalue


def _hessian_vector_product(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: list[Any],
    params: list[nn.Parameter],
    v: list[torch.Tensor],
) -> list[torch.Tensor]:
    """H v for L = mean of loss_fn over all batches (of all ranks)."""
    total = [torch.zeros_like(x) for x in v]
    for batch in batches:
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, x) for g, x in zip(grads, v, strict=True) if g is not None and g.requires_grad]
        if not pairs:  # the loss is linear in the parameters: H = 0
            continue
        directional = sum((g * x).sum() for g, x in pairs)
        products = torch.autograd.grad(directional, params, allow_unused=True)
        for t, h in zip(total, products, strict=True):
            if h is not None:
                t.add_(h.detach())
    count = torch.tensor(float(len(batches)))
    if in_process_group():
        *reduced, count = all_reduce_sum([*total, count])
        total = [r.to(t.dtype) for r, t in zip(reduced, total, strict=True)]
    if float(count) == 0:
        raise ValueError("hessian_top_eigenvalue got no batches; pass at least one")
    return _scaled(total, 1 / float(count))


def _scaled(tensors: list[torch.Tensor], factor: float) -> list[torch.Tensor]:
    return [t * factor for t in tensors]


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))
