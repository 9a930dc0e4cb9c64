r"""RIFT's covariance matching: the batch covariance against the pretrained Σ₀ (the paper's loss).

Notation as in :class:`~riftune.regularizers.rift.RIFT`; λᵢ↓(·) are eigenvalues in descending
order. With the statistics Σ̄, μ̄ below,

.. math::
    L = \|Σ̄ − QᵀΣ₀Q\|²_F / c_Σ + w\,\|μ̄ − Qᵀμ₀\|² / c_μ

- ``q="identity"``: Q = I, so L = ‖Σ̄ − Σ₀‖²_F/c_Σ + w‖μ̄ − μ₀‖²/c_μ.
- ``q="learned"``: Q = the rotation trained with the model (:mod:`.q.learned`).
- ``q="optimal"``: each term at its own minimum over orthogonal Q:
  L = Σᵢ (λᵢ↓(Σ̄) − λᵢ↓(Σ₀))²/c_Σ + w(‖μ̄‖ − ‖μ₀‖)²/c_μ, over all d eigenvalues
  (min_Q ‖A − QᵀBQ‖²_F for symmetric A, B; the sum is a lower bound of the joint
  minimum when w > 0). No Q is stored.
- ``normalize=True``: c_Σ = ‖Σ₀‖²_F and c_μ = tr(Σ₀), which makes each term invariant to a
  rescaling of the embeddings, so λ means the same across backbones; else c_Σ = c_μ = 1.
- ``stats="batch"``: Σ̄ = Σ(z), μ̄ = μ(z). ``stats="ema"``: Σ̄ = (1 − m)·R + m·Σ(z) and
  μ̄ = (1 − m)·r + m·μ(z), where R, r are running estimates (buffers, not differentiated, so
  the gradient flows through the current batch only; m = ``momentum``). They start at
  Σ₀, μ₀ when the reference is fitted (the model starts pretrained) and, in training
  mode, are replaced by Σ̄, μ̄ after each call. Two variants keep the per-call cost at
  that of the batch (no d×d rotation or decomposition every call):

  - with ``q="learned"`` the running estimates live in Q's frame: R ← (1 − m)·R +
    m·QΣ(z)Qᵀ, r ← (1 − m)·r + m·Qμ(z), and L = ‖R − Σ₀‖²_F/c_Σ + w‖r − μ₀‖²/c_μ after
    the update. While Q is fixed this equals the formula above (Σ̄ rotated by Q); as Q
    learns, earlier batches keep the rotation of their own step, and Q's gradient, like
    z's, comes from the current batch.
  - with ``q="optimal"`` the cov term is ‖Σ̄ − T‖²_F/c_Σ with T = V diag(λ↓(Σ₀)) Vᵀ, V the
    eigenvectors of Σ̄ (ordered by descending eigenvalue), recomputed every
    ``eigh_every`` training calls (and kept as a buffer in between). On a call that
    recomputes V it equals Σᵢ (λᵢ↓(Σ̄) − λᵢ↓(Σ₀))², value and gradient; between them it
    is an upper bound (T is a rotation of Σ₀'s spectrum, so ‖Σ̄ − T‖ ≥ the minimum).
    ``eigh_every=1`` is exact on every call.

Cost per call (n rows, d features; under ``torch.distributed`` n is the global batch):

- identity: Σ₀ of N reference rows has rank r ≤ N − 1. When n + r < d, with Σ₀ = FFᵀ
  (F: d×r, from one d×d eigendecomposition in float64 at the first call after a fit or a
  load), ‖Σ(z) − Σ₀‖²_F = ‖Z_cZ_cᵀ‖²/(n − 1)² − 2‖Z_cF‖²/(n − 1) + ‖FᵀF‖²: an n×n and an
  n×r product, O(n·d·(n + r)) forward and backward
  (:func:`~riftune.regularizers.rift.functional.low_rank_covariance_gap`; 2-5× faster at
  d = 1280 with N = 100-1000, and closer to float64). Otherwise one d×n by n×d product into
  the d×d difference Σ(z) − Σ₀, O(n·d²) time and O(d²) memory, whose gradient is one n×d by
  d×d product (:func:`~riftune.regularizers.rift.functional.squared_gram_gap`).
- learned: plus the rotation of n (+1) rows, O(n·d²) with d/b sequential blocks of b ≤ 512
  reflections on a GPU (≤ 32 elsewhere); no d×d factorization or d×d product. With
  ``q_rank=k``: O(n·k·d) and k/b blocks.
- optimal: an n×n Gram matrix, O(n²·d), and its eigenvalues (in float64), since it shares
  Σ(z)'s non-zero spectrum (n > d: the d×d covariance); Σ₀'s eigenvalues are computed once
  by ``fit_reference``. On a GPU the eigensolver waits for the device (an error check), so
  this variant synchronizes once per call.
- ``stats="ema"``: the d×d estimate costs O(n·d²) as above; with ``learned`` plus the
  rotation of n (+1) rows; with ``optimal`` a d×d eigendecomposition and product, O(d³),
  once every ``eigh_every`` calls.

The statistics of the pretrained embeddings (Σ₀, μ₀, ‖Σ₀‖²_F, tr Σ₀ and the optional buffers
of :meth:`CovarianceMatching.buffers`) are buffers of the RIFT module, which every method here
receives as ``owner``; this class holds only the options and the module's Q (:mod:`.q`), which
owns Q's own tensors (the learned rotation, Σ₀'s spectrum, the running spectral target).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from riftune.regularizers.rift.functional import (
    covariance_factor,
    low_rank_covariance_gap,
    squared_gram_gap,
)
from riftune.regularizers.rift.q import QStrategy


class CovarianceMatching:
    """``match="covariance"``: the loss above, from the RIFT module's fitted statistics.

    Args:
        q: the RIFT module's Q, which moves the batch into its frame and computes the gaps.
        stats: ``"batch"`` or ``"ema"``.
        normalize: c_Σ = ‖Σ₀‖²_F and c_μ = tr Σ₀ (else 1).
        mean_weight: w ≥ 0.
        momentum: m ∈ (0, 1], the current batch's weight in the running estimates.
    """

    reference = None  # fitted statistics, no per-sample reference
    dropped_state_keys: tuple[str, ...] = ()

    def __init__(
        self,
        q: QStrategy,
        stats: str,
        normalize: bool,
        mean_weight: float,
        momentum: float,
    ):
        self.q, self.stats = q, stats
        self.normalize, self.mean_weight = normalize, mean_weight
        self.momentum = momentum
        self._factor: _ReferenceFactor | None = None  # of Σ₀, made at the first batch

    # ------------------------------------------------------------------------------ state
    def buffers(self, dim: int) -> dict[str, Tensor]:
        """The buffers this matching adds to the module's (name: initial value)."""
        extra = {"ref_cov": torch.zeros(dim, dim)}
        if self.stats == "ema":
            extra["running_cov"] = torch.zeros(dim, dim)
            extra["running_mean"] = torch.zeros(dim)
        return extra

    def check_fit(self, cov: Tensor) -> None:
        """ValueError when ``normalize`` would divide by a zero ‖Σ₀‖²_F."""
        if self.normalize and cov.square().sum() == 0:
            raise ValueError(
                "the reference features have zero variance, so normalize=True would divide "
                "by zero; check the features or pass normalize=False"
            )

    @torch.no_grad()
    def fit(self, owner: nn.Module, cov: Tensor, mean: Tensor) -> None:
        """Store Σ₀ and start the running estimates at Σ₀, μ₀."""
        owner.ref_cov.copy_(cov)
        if self.stats == "ema":
            owner.running_cov.copy_(cov)
            owner.running_mean.copy_(mean)
        self._factor = None

    def after_load(self, owner: nn.Module) -> None:
        """Σ₀ may have changed: forget its factor."""
        self._factor = None

    def check_inputs(self, owner: nn.Module, z: Tensor, reference: Tensor | None) -> None:
        """ValueError for a per-sample reference, or before :meth:`fit`."""
        if reference is not None:
            raise ValueError(
                "match='covariance' takes no per-sample reference; call forward(z), or "
                "build RIFT(match='paired')"
            )
        if not owner.fitted:
            raise ValueError(
                "RIFT(match='covariance') has no reference statistics; call "
                "fit_reference(pretrained_embeddings) before forward"
            )

    # ------------------------------------------------------------------------------- loss
    def loss(self, owner: nn.Module, z: Tensor, reference: Tensor | None = None) -> Tensor:
        """L of the (global) batch ``z`` (n, d), already in the compute dtype."""
        dtype = z.dtype
        mean = z.mean(0)
        zc = z - mean
        with_mean = self.mean_weight > 0
        # the running estimates, too, live in Q's frame
        zc, mean = self.q.to_frame(zc, mean, with_mean or self.stats == "ema")
        if self.stats == "ema":
            cov_term, mean = self._running_cov_term(owner, zc, mean)
        else:
            cov_term = self.q.covariance_gap(zc, lambda rows: self._gap_to_reference(owner, rows))
        if self.normalize:
            cov_term = cov_term / owner.ref_cov_sq_norm.to(dtype)
        if not with_mean:
            return cov_term
        mean_term = self.q.mean_gap(mean, owner.ref_mean.to(dtype))
        if self.normalize:
            mean_term = mean_term / owner.ref_trace.to(dtype)
        return cov_term + self.mean_weight * mean_term

    def _gap_to_reference(self, owner: nn.Module, zc: Tensor) -> Tensor:
        """‖Σ(z) − Σ₀‖²_F from the centered rows: the low-rank form when n + r < d, else the
        d×d difference.

        Shape:
            - zc: (n, d).
            - output: scalar.
        """
        dtype, n = zc.dtype, zc.shape[0]
        if (factor := self._low_rank_reference(owner, n, dtype)) is not None:
            return low_rank_covariance_gap(zc, *factor, 1 / (n - 1))
        with torch.no_grad():
            diff = torch.addmm(owner.ref_cov.to(dtype), zc.T, zc, beta=-1, alpha=1 / (n - 1))
        return squared_gram_gap(zc, diff, 1 / (n - 1))

    def _low_rank_reference(
        self, owner: nn.Module, n: int, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor] | None:
        """(F, ‖FᵀF‖²) with FFᵀ = Σ₀ in ``dtype`` when Σ₀'s rank r = N − 1 (N reference rows)
        is low enough that n + r < d, else ``None`` (the d×d form is cheaper).

        Made from the ``ref_cov`` buffer at the first call after :meth:`fit` or a load (one
        d×d eigendecomposition in float64) and kept, per dtype and device.
        """
        d = owner.ref_cov.shape[0]
        if self._factor is None:
            rank = min(int(owner.ref_count.item()) - 1, d)
            self._factor = _ReferenceFactor(
                covariance_factor(owner.ref_cov, rank) if rank < d else None
            )
        return self._factor.get(owner.ref_cov.device, dtype) if self._factor.rank + n < d else None

    def _running_cov_term(
        self, owner: nn.Module, zc: Tensor, mean: Tensor
    ) -> tuple[Tensor, Tensor]:
        """‖Σ̄ − T‖²_F and μ̄ with Σ̄ = (1 − m)·R + m·Σ(z), μ̄ = (1 − m)·r + m·μ(z).

        T is Σ₀ (identity, learned) or Σ₀'s spectrum in Σ̄'s eigenbasis (optimal). In training
        mode R, r are replaced by Σ̄, μ̄.
        """
        dtype, n, m = zc.dtype, zc.shape[0], self.momentum
        with torch.no_grad():  # one kernel each; gradients flow through this batch only
            sigma = torch.addmm(
                owner.running_cov.to(dtype), zc.T, zc, beta=1 - m, alpha=m / (n - 1)
            )
        mean = torch.lerp(owner.running_mean.to(dtype), mean, m)
        target = self.q.running_target(sigma, owner.ref_cov)
        if owner.training:
            with torch.no_grad():
                owner.running_cov.copy_(sigma)
                owner.running_mean.copy_(mean)
        return squared_gram_gap(zc, sigma - target, m / (n - 1)), mean


class _ReferenceFactor:
    """Σ₀'s factor F (d, r) and ‖FᵀF‖²_F in float64, with their casts as the loss asks for them."""

    def __init__(self, factor: tuple[Tensor, Tensor] | None):
        self.master = factor
        self.rank = factor[0].shape[1] if factor is not None else float("inf")
        self._casts: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._casts:
            self._casts[key] = tuple(t.to(device=device, dtype=dtype) for t in self.master)
        return self._casts[key]
