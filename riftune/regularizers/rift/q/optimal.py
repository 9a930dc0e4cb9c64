r"""``q="optimal"``: each term at its minimum over orthogonal Q, in closed form, never stored.

- Covariance matching: min_Q ‖Σ̄ − QᵀΣ₀Q‖²_F = Σᵢ (λᵢ↓(Σ̄) − λᵢ↓(Σ₀))² over all d eigenvalues
  (λ↓: descending) and min_Q ‖μ̄ − Qᵀμ₀‖² = (‖μ̄‖ − ‖μ₀‖)²; their sum is a lower bound of the
  joint minimum when the mean term is on. Σ₀'s eigenvalues are a buffer, fitted once.
- With running estimates (``stats="ema"``) the covariance term is ‖Σ̄ − T‖²_F with
  T = V diag(λ↓(Σ₀)) Vᵀ, V the eigenvectors of Σ̄, recomputed every ``eigh_every`` training
  calls and kept as a buffer in between: exact on a call that recomputes V (value and
  gradient), an upper bound between them.
- Paired matching: the orthogonal Procrustes minimum ‖Ẑ‖²_F + ‖R̂‖²_F − 2‖R̂ᵀẐ‖_*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from riftune.regularizers.rift.functional import (
    batch_covariance_eigvals,
    norm_gap,
    procrustes_distance,
    spectral_distance,
    symmetric_eigvecs,
)
from riftune.regularizers.rift.q.base import QSettings, QStrategy, register_q


@register_q
class OptimalQ(QStrategy):
    """The best Q for each batch (the formulas above).

    Buffers: ``ref_eigvals`` (d,), λ↓(Σ₀), with covariance matching; ``spectral_target``
    (d, d), T, and ``spectral_age``, the training calls since the fit, with running estimates.
    ``training_calls`` mirrors ``spectral_age`` without a device synchronization.

    Args:
        settings: ``eigh_every`` k ≥ 1, the training calls between refreshes of T.
    """

    name = "optimal"
    help = "'optimal' (the best rotation per batch, in closed form)"
    legacy_keys: ClassVar[dict[str, str]] = {
        key: key for key in ("ref_eigvals", "spectral_target", "spectral_age")
    }

    def __init__(self, settings: QSettings):
        super().__init__(settings)
        self.eigh_every = settings.eigh_every
        self.covariance = settings.covariance
        self.running = settings.covariance and settings.running
        self.training_calls = 0
        if settings.covariance:
            self.register_buffer("ref_eigvals", torch.zeros(settings.dim))
        if self.running:
            self.register_buffer("spectral_target", torch.zeros(settings.dim, settings.dim))
            self.register_buffer("spectral_age", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(_after_load)

    @torch.no_grad()
    def fit(self, cov: Tensor) -> None:
        """Store λ↓(Σ₀) (clamped at 0) and restart the refresh count."""
        if self.covariance:
            self.ref_eigvals.copy_(torch.linalg.eigvalsh(cov).flip(0).clamp_min(0))
        if self.running:
            self.spectral_age.zero_()
        self.training_calls = 0

    def matrix(self, like: Tensor) -> Tensor:
        """No Q is stored: ValueError."""
        raise ValueError(
            "q='optimal' stores no rotation: the best Q is found per batch in closed form"
        )

    def covariance_gap(self, zc: Tensor, gap_to_reference: Callable[[Tensor], Tensor]) -> Tensor:
        """Σᵢ (λᵢ↓(Σ(z)) − λᵢ↓(Σ₀))², from the n×n Gram matrix when n ≤ d.

        Shape:
            - zc: (n, d), centered.
            - output: scalar.
        """
        return spectral_distance(batch_covariance_eigvals(zc), self.ref_eigvals.to(zc.dtype))

    def running_target(self, sigma: Tensor, reference_cov: Tensor) -> Tensor:
        """T = V diag(λ↓(Σ₀)) Vᵀ for the running Σ̄ (d, d): recomputed from Σ̄'s eigenvectors V
        when the training-call count is a multiple of ``eigh_every``, else the stored one."""
        if self.training_calls % self.eigh_every == 0:
            with torch.no_grad():
                vectors = symmetric_eigvecs(sigma)
                ascending = self.ref_eigvals.flip(0).to(vectors.dtype)
                target = ((vectors * ascending) @ vectors.T).to(sigma.dtype)
            if self.training:
                self.spectral_target.copy_(target)
        else:
            target = self.spectral_target.to(sigma.dtype)
        if self.training:
            self.training_calls += 1
            self.spectral_age.fill_(self.training_calls)
        return target

    def mean_gap(self, mean: Tensor, mu0: Tensor) -> Tensor:
        """(‖μ̄‖ − ‖μ₀‖)².

        Shape:
            - mean, mu0: (d,).
            - output: scalar.
        """
        return norm_gap(mean, mu0)

    def paired_distance(self, z_hat: Tensor, r_hat: Tensor) -> Tensor:
        """min over orthogonal Q of ‖Ẑ − R̂Q‖²_F (clamped at 0).

        Shape:
            - z_hat, r_hat: (k, d).
            - output: scalar.
        """
        return procrustes_distance(z_hat, r_hat)


def _after_load(module: OptimalQ, incompatible_keys: Any) -> None:
    """Mirror the loaded refresh count."""
    if module.running:
        module.training_calls = int(module.spectral_age.item())
