r"""RIFT's paired matching: each sample's embedding against its pretrained one, up to Q.

``forward(z, reference)`` where ``reference`` holds the pretrained embeddings of the same n
samples (treated as a constant). With ẑ = Z_c/‖Z_c‖_F and r̂ = R_c/‖R_c‖_F (R_c the centered
reference),

.. math::
    L = \|ẑ − r̂Q\|²_F + w\,n\,\|μ(z)/\|Z_c\|_F − Qᵀμ(r)/\|R_c\|_F\|²

which is ‖Ẑ − R̂Q‖²_F for the batches Ẑ, R̂ with the scaled mean appended as one more row
(√(w·n)·μ/‖·‖_F); with w = 1 that is the uncentered batches z/‖Z_c‖_F and r/‖R_c‖_F.

Q enters through :meth:`QStrategy.paired_distance <riftune.regularizers.rift.q.QStrategy>`:
``identity`` Q = I; ``learned`` the trained rotation (it covers SO(d), which reaches the
Procrustes optimum whenever n < d; for n > d the optimum may need a reflection); ``optimal``
the orthogonal Procrustes minimum ‖Ẑ‖²_F + ‖R̂‖²_F − 2‖R̂ᵀẐ‖_* (= 2 − 2‖r̂ᵀẑ‖_* for w = 0;
‖·‖_* the nuclear norm).

The loss is scale-free by construction (``normalize`` has no effect), ``stats="ema"`` does not
apply (a running average of batches of different samples does not pair with anything), and it
needs no fitted statistics.

Cost per call: identity O(n·d); learned plus the rotation of n (+1) rows, O(n·d²) (O(n·k·d)
with ``q_rank=k``); optimal a QR factorization of the d×n reference (no gradient), an n×n Gram
matrix (O(n²·d)) and one n×n eigendecomposition, in float64 (one device synchronization on a
GPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from riftune.regularizers.rift.functional import check_rows
from riftune.regularizers.rift.q import QStrategy

_NORM_EPS = 1e-12


def normalized_pair(z: Tensor, ref: Tensor, mean_weight: float) -> tuple[Tensor, Tensor]:
    """(Ẑ, R̂): both sides centered and scaled to unit Frobenius norm, the scaled means appended.

    Shape:
        - z, ref: (n, d).
        - output: (n, d) each, or (n + 1, d) with ``mean_weight`` > 0.
    """
    n = z.shape[0]
    z_mean, r_mean = z.mean(0), ref.mean(0)
    zc, rc = z - z_mean, ref - r_mean
    z_scale = torch.linalg.vector_norm(zc).clamp_min(_NORM_EPS)
    r_scale = torch.linalg.vector_norm(rc).clamp_min(_NORM_EPS)
    z_hat, r_hat = zc / z_scale, rc / r_scale
    if mean_weight > 0:
        factor = math.sqrt(mean_weight * n)
        z_hat = torch.cat([z_hat, (factor * z_mean / z_scale)[None]])
        r_hat = torch.cat([r_hat, (factor * r_mean / r_scale)[None]])
    return z_hat, r_hat


class PairedMatching:
    """``match="paired"``: the loss above, with Q as ``q`` computes it.

    Args:
        q: the RIFT module's Q.
        mean_weight: w ≥ 0.
        reference_source: where the engine takes the references from, ``"cache"`` or
            ``"teacher"``.
    """

    # Σ₀ is never read here; state dicts written before it was dropped still hold it
    dropped_state_keys: tuple[str, ...] = ("ref_cov",)

    def __init__(self, q: QStrategy, mean_weight: float, reference_source: str):
        self.q, self.mean_weight = q, mean_weight
        self.reference = reference_source

    def buffers(self, dim: int) -> dict[str, Tensor]:
        """No buffers beyond the module's own."""
        return {}

    def check_fit(self, cov: Tensor) -> None:
        """Any reference fits (the loss is scale-free)."""

    def fit(self, owner: nn.Module, cov: Tensor, mean: Tensor) -> None:
        """Nothing to store: the loss reads no statistics."""

    def after_load(self, owner: nn.Module) -> None:
        """Nothing to mirror."""

    def check_inputs(self, owner: nn.Module, z: Tensor, reference: Tensor | None) -> None:
        """ValueError unless ``reference`` is an (n, d) batch of as many rows as ``z``."""
        if reference is None:
            raise ValueError(
                "match='paired' needs forward(z, reference) with the pretrained "
                "embeddings of the same samples"
            )
        check_rows(reference, "reference embeddings", owner.dim)
        if reference.shape[0] != z.shape[0]:
            raise ValueError(
                f"reference has {reference.shape[0]} rows but the batch has {z.shape[0]}; "
                "pass the pretrained embeddings of the same samples"
            )

    def loss(self, owner: nn.Module, z: Tensor, reference: Tensor | None = None) -> Tensor:
        """L of the (global) batch ``z`` and its ``reference`` (n, d), in the compute dtype."""
        assert reference is not None
        z_hat, r_hat = normalized_pair(z, reference, self.mean_weight)
        return self.q.paired_distance(z_hat, r_hat)
