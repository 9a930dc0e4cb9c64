r"""AdamW with Selective Projection Decay (SPD).

Tian, Huang & Kira, "Rethinking Weight Decay for Robust Fine-Tuning of Foundation Models",
NeurIPS 2024 (https://arxiv.org/abs/2411.01713; reference code: GT-RIPL/Selective-Projection-
Decay, ``AdamSPD``). Instead of decaying every weight toward zero, SPD pulls a parameter tensor
back toward its anchor θ₀ (the pretrained value), and only on steps where that tensor's
progress is inconsistent. Per parameter tensor, at step t with gradient g_t:

.. math::

    \tilde\theta_t &= \mathrm{Adam}(\theta_{t-1}, g_t)
        \quad\text{(the AdamW step, without weight decay)}\\
    c_t &= -g_t^\top(\theta_{t-1} - \theta_0)\\
    r_t &= \frac{\max(0,\ \gamma_t - \gamma_{t-1})}{\gamma_t},\qquad
        \gamma_t = \lVert\tilde\theta_t - \theta_0\rVert_2,\
        \gamma_{t-1} = \lVert\theta_{t-1} - \theta_0\rVert_2\\
    \theta_t &= \begin{cases}
        \tilde\theta_t - \lambda\,r_t\,(\tilde\theta_t - \theta_0) & c_t < 0\\
        \tilde\theta_t & c_t \ge 0
    \end{cases}

c_t < 0 says the descent direction −g_t points against the tensor's accumulated deviation
θ_{t−1} − θ₀ (its loss reduction is not consistent); r_t is the share of the new deviation
that this step added (0 when the step did not move the tensor further away). With λ = 1 the
decayed step is the projection of θ̃_t back onto the sphere of radius γ_{t−1} around θ₀: the
deviation cannot grow on such a step. SPD replaces weight decay for anchored parameters (their
groups have ``weight_decay=0``, see :func:`spd_param_groups`); parameters without an anchor
(the new head, a regularizer's own parameters) get plain AdamW with its decoupled weight decay.

With parameter-efficient methods the anchor of every parameter the method adds (LoRA's A and
B, OFT's rotation parameters, prompts, adapters) is the origin, as in the paper ("regularizes
‖ΔW_t‖"): SPD then shrinks the adapter itself, so LoRA's update ΔW = s·BA, B starting at 0, is
pulled back toward 0, i.e. toward the pretrained function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from riftune.models.classifier import Classifier
from riftune.optim.anchors import pair_anchors
from riftune.tuning.base import FinetuningMethod, is_head


class SPDAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` followed by Selective Projection Decay of the anchored tensors.

    The Adam part is PyTorch's AdamW itself (same state, ``state_dict`` and kernels); the decay
    acts after it, per anchored tensor, by the rule in the module docs. Anchors are kept on the
    optimizer, not in its ``state_dict``: they are the pretrained values, which a resumed run
    rebuilds (:func:`spd_anchors` on the model before the checkpoint is loaded). Under
    DistributedDataParallel the gradients, and so every decision, are the same on all ranks.

    Args:
        params: parameters or parameter groups, as for AdamW; every group holding an anchored
            parameter must have ``weight_decay == 0`` (:func:`spd_param_groups` builds them).
        anchors: θ₀ per parameter, keyed by the parameter object; parameters missing here get
            plain AdamW. Each anchor has its parameter's shape, dtype and device.
        spd_lam: λ, the strength of the decay (the paper's default range starts at 1: the
            projection onto the previous deviation's sphere); 0 gives AdamW exactly.
        **adamw_kwargs: ``lr``, ``betas``, ``eps``, ``weight_decay`` (for unanchored
            parameters), ... as for ``torch.optim.AdamW``.

    Raises:
        ValueError: a negative λ, ``fused=True``, an anchor of the wrong shape, of a parameter
            the optimizer does not hold, or in a group with non-zero weight decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        anchors: Mapping[torch.Tensor, torch.Tensor],
        spd_lam: float = 1.0,
        **adamw_kwargs: Any,
    ) -> None:
        if adamw_kwargs.get("fused"):
            raise ValueError(
                "SPDAdamW runs its decay after AdamW's step; fused=True is not supported"
            )
        super().__init__(params, **adamw_kwargs)
        if spd_lam < 0:
            raise ValueError(f"spd_lam must be >= 0; got {spd_lam}")
        self.spd_lam = spd_lam
        self._anchored = pair_anchors(self.param_groups, anchors, "SPD")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW step, then the selective projection decay (module docs)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moving = [(p, a) for p, a in self._anchored if p.grad is not None]
        if self.spd_lam == 0 or not moving:
            super().step()
            return loss
        params = [p for p, _ in moving]
        anchors = [a for _, a in moving]
        deviation = torch._foreach_sub(params, anchors)
        previous = torch.stack(torch._foreach_norm(deviation))
        inner = torch.stack(
            [
                torch.vdot(p.grad.flatten(), d.flatten())
                for p, d in zip(params, deviation, strict=True)
            ]
        )
        fires = -inner < 0  # c_t < 0
        del deviation
        super().step()
        deviation = torch._foreach_sub(params, anchors)
        current = torch.stack(torch._foreach_norm(deviation))
        grown = (current - previous).clamp(min=0)
        ratio = torch.where(current > 0, grown / current, torch.zeros_like(current))
        scale = self.spd_lam * ratio * fires
        torch._foreach_mul_(deviation, list(scale.unbind()))
        torch._foreach_sub_(params, deviation)
        return loss


def spd_anchors(model: Classifier, method: FinetuningMethod) -> dict[nn.Parameter, torch.Tensor]:
    """θ₀ for every backbone parameter that ``method`` trains in any of its phases.

    Call after ``method.apply(model)`` and before any update (on a resumed run: before the
    checkpoint is loaded), so that pretrained parameters are anchored at their pretrained
    values. Parameters the method added (``method.is_new``) are anchored at zero; the head
    has no anchor (it starts from scratch: plain AdamW).

    Returns:
        Detached copies (zeros for added parameters), keyed by the parameter, on its device.
    """
    anchors = {}
    for name, param in model.named_parameters():
        if is_head(name) or not any(method.is_trainable(name, ph) for ph in method.phases):
            continue
        anchors[param] = torch.zeros_like(param) if method.is_new(name) else param.detach().clone()
    return anchors


def spd_param_groups(
    groups: list[dict[str, Any]], anchors: Mapping[torch.Tensor, torch.Tensor]
) -> list[dict[str, Any]]:
    """``groups`` with every anchored parameter moved to a twin group without weight decay.

    Each group splits into its unanchored parameters (the group as it was) and its anchored
    ones (same options, ``weight_decay=0.0``, ``name`` suffixed ``/spd`` when named); empty
    parts are left out. Order of parameters within each part is kept.
    """
    anchored = {id(p) for p in anchors}
    out = []
    for group in groups:
        plain = [p for p in group["params"] if id(p) not in anchored]
        decayed = [p for p in group["params"] if id(p) in anchored]
        if plain:
            out.append({**group, "params": plain})
        if decayed:
            twin = {**group, "params": decayed, "weight_decay": 0.0}
            if "name" in group:
                twin["name"] = f"{group['name']}/spd"
            out.append(twin)
    return out
