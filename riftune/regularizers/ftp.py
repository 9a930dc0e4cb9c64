r"""Fast Trainable Projection (FTP, Tian et al., "Fast Trainable Projection for Robust
Fine-Tuning", NeurIPS 2023, https://arxiv.org/abs/2310.19182): ``--reg ftp``.

FTP is no penalty on the loss but a change of the optimizer's step, like SPD (the same group's
successor to TPGM): after each AdamW update, every anchored tensor W (pretrained value W₀; 0 for
parameters a method adds, e.g. LoRA factors) is projected back into a ball around W₀ whose
radius γ is learned per tensor from the same gradients,

.. math::
    W_t = W_0 + \mathrm{clip}(\gamma_t / \lVert c_{t,i}\rVert_1,\ 0,\ 1)\, c_{t,i},\qquad
    c_t = \tilde W_t - W_0 \ \text{(row } i\text{)},

with γ_t an Adam step on ∂L/∂γ, whose positive values are scaled by κ = ``--lam`` (the
reference code's ``k``, default 1); the optimizer is :class:`riftune.optim.ftp.FTPAdamW`. It is
registered as a regularizer so that it composes with every method that trains backbone weights
and a grid chooses its κ on validation like the others' λ. ``--method linear`` trains no
backbone weight, so FTP has nothing to constrain there and the combination is refused.
"""

from __future__ import annotations

import torch

from riftune.regularizers.base import Regularizer, StepInputs, register


@register
class FastTrainableProjection(Regularizer):
    """``--reg ftp``: the engine builds the FTP optimizer with κ = λ; the penalty is 0."""

    name = "ftp"
    splits_over_micro_batches = True
    optimizer = "ftp"
    has_penalty = False
    # it constrains the backbone's weights alone: nothing to do when a method freezes them
    penalizes_features_only = True

    def penalty(self, step: StepInputs) -> torch.Tensor:
        return step.embeddings.new_zeros(())
