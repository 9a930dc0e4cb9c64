r"""Selective Projection Decay (SPD, Tian et al., "Rethinking Weight Decay for Robust Fine-Tuning
of Foundation Models", NeurIPS 2024, https://arxiv.org/abs/2411.01713): ``--reg spd``.

SPD is no penalty on the loss but a change of the optimizer's step: after each AdamW update of a
parameter θ with pretrained value θ₀ (0 for parameters a method adds, e.g. LoRA factors), when
c_t = −g_tᵀ(θ_{t−1} − θ₀) < 0 the update is pulled back towards θ₀,

.. math::
    θ_t ← θ̃_t − λ\,r_t\,(θ̃_t − θ₀),\qquad
    r_t = \max(0,\ ‖θ̃_t − θ₀‖ − ‖θ_{t−1} − θ₀‖)\,/\,‖θ̃_t − θ₀‖,

with λ = ``--lam`` (the optimizer is :class:`riftune.optim.spd.SPDAdamW`; anchored parameters
get no weight decay, the head keeps ``--weight-decay``). It is registered as a regularizer so
that it composes with every method and a grid chooses its λ on validation like the others'.
"""

from __future__ import annotations

import torch

from riftune.regularizers.base import Regularizer, StepInputs, register


@register
class SelectiveProjectionDecay(Regularizer):
    """``--reg spd``: the engine builds the SPD optimizer with strength ``--lam``; no penalty
    (the train step's loss is the task loss alone)."""

    name = "spd"
    splits_over_micro_batches = True
    optimizer = "spd"
    has_penalty = False

    def penalty(self, step: StepInputs) -> torch.Tensor:
        return step.embeddings.new_zeros(())
