"""``q="learned"``: one rotation trained with the model, a product of Householder reflections."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from riftune.regularizers.rift.householder import HouseholderRotation
from riftune.regularizers.rift.q.base import QSettings, QStrategy, register_q


@register_q
class LearnedQ(QStrategy):
    r"""Q = :attr:`rotation`, a :class:`HouseholderRotation` trained with the model (give
    RIFT's parameters to the optimizer).

    Covariance matching rotates the batch instead of Σ₀: Σ(Z_cQᵀ) = QΣ(z)Qᵀ and
    ‖QΣQᵀ − Σ₀‖_F = ‖Σ − QᵀΣ₀Q‖_F, so the n rows (and the mean, as one more row) are rotated
    and no d×d product is formed; with running estimates those live in Q's frame. Paired
    matching rotates the reference rows, R̂Q. It covers the rotations SO(d), which reach the
    Procrustes optimum whenever n < d.

    Args:
        settings: ``q_rank`` an even k ≥ 2 for a rotation that moves at most a k-dimensional
            subspace (k ≥ d or None: all of ℝᵈ).
    """

    name = "learned"
    help = "'learned' (one rotation trained with the model)"
    options = frozenset({"q_rank", "q_lr"})
    bench_variants: ClassVar[dict[str, dict]] = {
        "rank=d": {"q_rank": "all"},
        "rank=64": {"q_rank": 64},
    }
    legacy_keys: ClassVar[dict[str, str]] = {"learned_rotation.reflectors": "rotation.reflectors"}

    def __init__(self, settings: QSettings):
        super().__init__(settings)
        self.rotation = HouseholderRotation(settings.dim, rank=settings.q_rank)

    def extra_repr(self) -> str:
        return f"q={self.name!r}, q_rank={self.rotation.rank}"

    @torch.no_grad()
    def fit(self, cov: Tensor) -> None:
        """With a rank k: reset Q to I, its reflection pairs at Σ₀'s top k/2 eigenvectors."""
        if self.rotation.rank is not None:
            top = self.rotation.rank // 2
            _, vectors = torch.linalg.eigh(cov)  # float64: float32 LAPACK can fail here
            self.rotation.start_at(vectors[:, -top:].flip(1))

    def matrix(self, like: Tensor) -> Tensor:
        """Q (d, d), differentiable, in the reflectors' dtype."""
        return self.rotation.matrix()

    def to_frame(self, zc: Tensor, mean: Tensor, with_mean: bool) -> tuple[Tensor, Tensor]:
        """(Z_cQᵀ, Qμ), the mean rotated as one more row; without ``with_mean`` it comes back
        unrotated.

        Shape:
            - zc: (n, d); mean: (d,).
            - output: (n, d) and (d,).
        """
        if not with_mean:
            return self.rotation.rotate_rows(zc), mean
        rows = self.rotation.rotate_rows(torch.cat([zc, mean[None]]))
        return rows[:-1], rows[-1]

    def align_reference(self, r_hat: Tensor) -> Tensor:
        """R̂Q: rows r̂ᵢ mapped to Qᵀr̂ᵢ.

        Shape:
            - r_hat, output: (k, d).
        """
        return self.rotation.rotate_rows(r_hat, transpose=True)
