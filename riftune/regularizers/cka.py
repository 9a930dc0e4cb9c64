r"""Explicit CKA penalty (called RSC in the RIFT paper): keep the batch CKA to the pretrained model.

.. math::

    \Omega(z) = 1 - \mathrm{CKA}(Z, Z_0),\qquad
    \mathrm{CKA}(Z, Z_0) = \frac{\lVert Z_c^\top Z_{0,c}\rVert_F^2}
        {\lVert Z_c^\top Z_c\rVert_F\,\lVert Z_{0,c}^\top Z_{0,c}\rVert_F}

with Z the finetuned embeddings of the batch, Z₀ the pretrained embeddings of the same samples
and ·_c column centering over the batch (linear CKA, Kornblith et al., "Similarity of Neural
Network Representations Revisited", ICML 2019, https://arxiv.org/abs/1905.00414). This is the
pairwise representation-similarity constraint the RIFT paper (arXiv 2503.07399,
https://arxiv.org/abs/2503.07399) compares against: it needs both models' embeddings of the same
samples at every step. Under ``torch.distributed`` CKA is taken over the global batch (every
rank's rows, gathered with gradient), so the penalty does not depend on how the batch is split.

Z₀ comes from a frozen pretrained forward pass of the batch (``--reference teacher``, the
published form; with peft methods the engine runs the base model with adapters disabled) or
from the per-sample cache of pretrained embeddings (``--reference cache``: the same values
without augmentation, at no per-step cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from riftune.distributed import gather_global_batch
from riftune.metrics.similarity import linear_cka
from riftune.options import Section, option
from riftune.regularizers.base import Regularizer, StepInputs, register

REFERENCE_CHOICES = ("teacher", "cache")


@dataclass
class ReferenceOptions(Section):
    """``--reference``, shared by ``cka`` and ``feature-distill``."""

    reference: Literal["teacher", "cache"] = option(
        "teacher",
        "pretrained embeddings for cka and feature-distill: a frozen forward pass of each "
        "batch (teacher, the published form) or the per-sample cache",
        flag="--reference",
    )


def paired_embeddings(step: StepInputs, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The finetuned and pretrained embeddings of a step, checked to pair up.

    Shape:
        Both (n, d).

    Raises:
        ValueError: no reference embeddings, or shapes that differ.
    """
    if step.reference is None:
        raise ValueError(
            f"{who} needs the pretrained embeddings of each batch (StepInputs.reference); "
            "run it with --reference teacher or --reference cache"
        )
    if step.embeddings.shape != step.reference.shape:
        raise ValueError(
            f"{who} pairs each sample's finetuned and pretrained embeddings; got shapes "
            f"{tuple(step.embeddings.shape)} and {tuple(step.reference.shape)}"
        )
    return step.embeddings, step.reference


class CKADistance(nn.Module):
    r"""1 − linear CKA between a batch's finetuned and pretrained embeddings, engine-free.

    Kornblith et al., ICML 2019 (https://arxiv.org/abs/1905.00414); the pairwise
    representation-similarity constraint (RSC) of the RIFT paper (arXiv 2503.07399):

    .. math::
        Ω(Z, Z_0) = 1 − \frac{‖Z_cᵀZ_{0,c}‖²_F}{‖Z_cᵀZ_c‖_F\,‖Z_{0,c}ᵀZ_{0,c}‖_F}

    with ·_c column centering over the batch. Z₀ is a constant (no gradient). Under an
    initialized ``torch.distributed`` process group both are all-gathered differentiably, so
    CKA is that of the global batch. Computed in float64, returned as float32.

    Shape:
        - z, z0: (n, d), n ≥ 2, the same samples in the same order.
        - output: scalar, float32.
    """

    def forward(self, z: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        z, z0 = gather_global_batch(z), gather_global_batch(z0.detach())
        return 1.0 - linear_cka(z, z0).float()


class ReferencePenalty(Regularizer):
    """Base of the penalties that compare z with the pretrained embeddings of the same samples.

    Args:
        reference: where those come from, ``"teacher"`` (a frozen forward pass per batch) or
            ``"cache"`` (the per-sample cache filled before training); flag ``--reference``.
    """

    reference = "teacher"
    penalizes_features_only = True

    def __init__(self, reference: str = "teacher"):
        super().__init__()
        if reference not in REFERENCE_CHOICES:
            raise ValueError(f"reference must be one of {REFERENCE_CHOICES}; got {reference!r}")
        self.reference = reference

    Options = ReferenceOptions


@register
class CKAPenalty(ReferencePenalty):
    """``--reg cka``: :class:`CKADistance` of the step's embeddings and their references.

    Args:
        reference: where z₀ comes from, ``"teacher"`` or ``"cache"``.
    """

    name = "cka"
    min_batch_size = 2  # CKA of one sample is undefined

    def __init__(self, reference: str = "teacher"):
        super().__init__(reference)
        self.distance = CKADistance()

    @classmethod
    def budget_for_similarity(cls, similarity: float, options: ReferenceOptions) -> float:
        """ε = 1 − s: the penalty is D = 1 − CKA."""
        return 1.0 - similarity

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """1 − CKA(z, z₀) over the global batch (:class:`CKADistance`); a float32 scalar."""
        return self.distance(*paired_embeddings(step, "--reg cka"))
