r"""AdamW with Fast Trainable Projection (FTP).

Tian, Liu, Smith & Kira, "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023
(https://arxiv.org/abs/2310.19182; reference code: GT-RIPL/FTP, ``util/FTP.py``, ``AdamP``).
Every anchored parameter tensor W (pretrained value W₀; 0 for parameters a method adds) is kept
inside a ball around W₀ whose radius γ is learned per tensor during training, from the same
gradients. At step t, with g_t the gradient at W_{t−1}:

.. math::

    \tilde W_t &= \mathrm{Adam}(W_{t-1}, g_t)
        \quad\text{(the AdamW step, without weight decay)}\\
    c_t &= \tilde W_t - W_0,\qquad
        n_{t,i} = \textstyle\sum_j |c_{t,ij}| + 10^{-8}
        \quad\text{(L1 norm of row i: the ``MARS'' norm, per output unit)}\\
    \nabla\gamma_t &= \textstyle\sum_{ij} g_{t,ij}\, c_{t-1,ij} / n_{t-1,i}
        \quad\text{(}\partial L/\partial\gamma\text{ through the last projection)}\\
    \nabla\gamma_t &\leftarrow \kappa\,\nabla\gamma_t \quad\text{if } \nabla\gamma_t > 0
        \quad\text{(gradient annealing: a shrinking radius is slowed by } \kappa\text{)}\\
    \gamma_t &= \mathrm{clip}\big(\mathrm{Adam}_{\mu}(\gamma_{t-1}, \nabla\gamma_t),\
        10^{-8},\ \max_i n_{t,i}\big)\\
    W_t &= W_0 + \mathrm{clip}(\gamma_t / n_{t,i},\ 0,\ 1)\; c_{t,i}\quad\text{per row } i

Rows are the first dimension (a convolution's output channels); a tensor of one dimension or
none (biases, BatchNorm) is one row. γ starts at 10⁻⁸ on a tensor's first step (so that step is
projected back almost onto W₀) and then moves by the Adam rule with learning rate μ = 10⁻², β =
(0.9, 0.999), ε = 10⁻⁸, bias-corrected by the tensor's step count t (1 on the first step, which
sets γ without an update), all as in the reference code. The reference's strength κ ("k",
default 1) is λ = ``--lam``: 0 lets the radii only grow, larger κ lets the task loss shrink them
faster. The head and the regularizer's own parameters have no anchor (plain AdamW with its
decoupled weight decay); anchored tensors get no weight decay (the reference runs with none).

Unlike SPD's anchors, FTP's state (γ, its Adam moments, c_{t−1}/n_{t−1} and the step count) is
in the optimizer's ``state_dict``, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from riftune.optim.anchors import pair_anchors

GAMMA_LR = 1e-2
GAMMA_BETAS = (0.9, 0.999)
GAMMA_EPS = 1e-8
MIN_RADIUS = 1e-8


def row_l1_norms(tensor: torch.Tensor) -> torch.Tensor:
    """L1 norm of each row (first dimension), + 10⁻⁸; one row for tensors of < 2 dimensions.

    Shape:
        tensor: (r, ...) or (r,) or (). Returns (r, 1, ..., 1) broadcastable against it, or a
        tensor of its shape with every dimension 1.
    """
    dims = tuple(range(1, tensor.ndim)) if tensor.ndim >= 2 else tuple(range(tensor.ndim))
    if not dims:
        return tensor.abs().reshape(tensor.shape) + MIN_RADIUS
    return tensor.abs().sum(dim=dims, keepdim=True) + MIN_RADIUS


class FTPAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` followed by FTP's learned projection of the anchored tensors.

    The Adam part is PyTorch's AdamW itself; the projection acts after it, per anchored tensor,
    by the rule in the module docs. Anchors are not in the ``state_dict`` (a resumed run
    rebuilds them from the pretrained model, as for SPD); γ and its moments are.

    Args:
        params: parameters or parameter groups, as for AdamW; every group holding an anchored
            parameter must have ``weight_decay == 0`` (build them with
            :func:`riftune.optim.spd.spd_param_groups`).
        anchors: W₀ per parameter, keyed by the parameter object
            (:func:`riftune.optim.spd.spd_anchors`); others get plain AdamW.
        ftp_k: κ, the factor on positive radius gradients (the reference's ``k``, default 1).
        **adamw_kwargs: ``lr``, ``betas``, ``eps``, ``weight_decay`` (for unanchored
            parameters), ... as for ``torch.optim.AdamW``.

    Raises:
        ValueError: a negative κ, ``fused=True``, an anchor of the wrong shape, of a parameter
            the optimizer does not hold, or in a group with non-zero weight decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        anchors: Mapping[torch.Tensor, torch.Tensor],
        ftp_k: float = 1.0,
        **adamw_kwargs: Any,
    ) -> None:
        if adamw_kwargs.get("fused"):
            raise ValueError("FTPAdamW projects after AdamW's step; fused=True is not supported")
        super().__init__(params, **adamw_kwargs)
        if ftp_k < 0:
            raise ValueError(f"ftp_k must be >= 0; got {ftp_k}")
        self.ftp_k = ftp_k
        self._anchored = pair_anchors(self.param_groups, anchors, "FTP")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW step, then the radius update and projection (module docs)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moving = [(p, a) for p, a in self._anchored if p.grad is not None]
        radius_grads = [self._radius_gradient(p) for p, _ in moving]
        super().step()
        for (param, anchor), radius_grad in zip(moving, radius_grads, strict=True):
            self._project(param, anchor, radius_grad)
        return loss

    def _radius_gradient(self, param: torch.Tensor) -> torch.Tensor | None:
        """∂L/∂γ through the last projection, annealed by κ when positive; None on the first
        step (no projection yet)."""
        state = self.state[param]
        if "ftp_direction" not in state:
            return None
        grad = torch.vdot(param.grad.flatten(), state["ftp_direction"].flatten())
        return torch.where(grad > 0, grad * self.ftp_k, grad)

    def _project(
        self, param: torch.Tensor, anchor: torch.Tensor, radius_grad: torch.Tensor | None
    ) -> None:
        """Set γ (its first step) or move it by Adam, then put ``param`` into its ball."""
        state = self.state[param]
        deviation = param - anchor  # c_t
        norms = row_l1_norms(deviation)
        if radius_grad is None:
            state["ftp_gamma"] = torch.full((), MIN_RADIUS, dtype=param.dtype, device=param.device)
            state["ftp_gamma_avg"] = torch.zeros((), dtype=param.dtype, device=param.device)
            state["ftp_gamma_avg_sq"] = torch.zeros((), dtype=param.dtype, device=param.device)
            state["ftp_step"] = 1  # a Python int: exact bias corrections, no device sync
        else:
            state["ftp_step"] += 1
            gamma = self._adam_radius(state, radius_grad)
            state["ftp_gamma"] = gamma.clamp(min=MIN_RADIUS).minimum(norms.max())
        ratio = (state["ftp_gamma"] / norms).clamp(0.0, 1.0)
        param.copy_(anchor + ratio * deviation)
        state["ftp_direction"] = deviation / norms

    @staticmethod
    def _adam_radius(state: dict, grad: torch.Tensor) -> torch.Tensor:
        """γ − μ·m̂/(√v̂ + ε), the moments updated in ``state`` (bias correction by its step,
        in float64 as the reference's: 1 − 0.999ᵗ loses 5 digits in float32)."""
        beta1, beta2 = GAMMA_BETAS
        t = state["ftp_step"]
        state["ftp_gamma_avg"] = beta1 * state["ftp_gamma_avg"] + (1 - beta1) * grad
        state["ftp_gamma_avg_sq"] = beta2 * state["ftp_gamma_avg_sq"] + (1 - beta2) * grad**2
        first = state["ftp_gamma_avg"] / (1 - beta1**t)
        second = state["ftp_gamma_avg_sq"] / (1 - beta2**t)
        return state["ftp_gamma"] - GAMMA_LR * first / (second.sqrt() + GAMMA_EPS)
