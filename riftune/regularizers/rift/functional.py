"""RIFT's pure functional core: spectra, the Procrustes nuclear norm and the Gram-gap gradient.

Every function here is a function of its tensor arguments alone (no module state), so each can
be tested against a dense or NumPy computation on its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Symmetric eigenproblems up to this size are solved in float64 (cheap at that size, and it
# keeps small eigenvalues accurate); larger ones in the input's precision.
FLOAT64_EIGH_MAX = 512


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype RIFT's statistics are computed in: float32 or wider."""
    return torch.promote_types(x.dtype, torch.float32)


def check_rows(x: Tensor, what: str, dim: int, min_rows: int = 2) -> None:
    """ValueError unless ``x`` is a floating (n, dim) tensor with n ≥ ``min_rows``."""
    if x.dim() != 2:
        raise ValueError(
            f"{what} must be a 2-D (n, d) tensor, got shape {tuple(x.shape)}; flatten "
            "or pool the features first"
        )
    if x.shape[1] != dim:
        raise ValueError(f"{what} have {x.shape[1]} features but RIFT was built with dim={dim}")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{what} need at least {min_rows} rows for batch statistics, got {x.shape[0]}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")


def symmetric_eigvals(a: Tensor) -> Tensor:
    """Ascending eigenvalues of a symmetric matrix, differentiable, in ``a``'s dtype.

    Up to 512×512 they are computed in float64; larger ones in ``a``'s precision, falling back
    as :func:`_robust_eigh` does where LAPACK fails to converge. Gradients go through
    eigenvectors only (V diag(g) Vᵀ, no eigenvalue gaps), so they stay finite for repeated or
    zero eigenvalues.

    Shape:
        - a: (k, k), symmetric.
        - output: (k,).
    """
    wide = a.double() if a.shape[-1] <= FLOAT64_EIGH_MAX else a
    return _robust_eigh(torch.linalg.eigvalsh, wide).to(a.dtype)


def symmetric_eigvecs(a: Tensor) -> Tensor:
    """Eigenvectors (columns, by ascending eigenvalue) of a symmetric matrix, no gradient.

    In float64 up to 512×512 (see :func:`symmetric_eigvals`), returned in that precision;
    larger ones in ``a``'s precision, or as :func:`_robust_eigh` falls back (in float64
    only at its last attempt).

    Shape:
        - a: (k, k), symmetric.
        - output: (k, k).
    """
    a = a.detach()
    wide = a.double() if a.shape[-1] <= FLOAT64_EIGH_MAX else a
    return _robust_eigh(_eigenvectors, wide)


def _eigenvectors(a: Tensor) -> Tensor:
    return torch.linalg.eigh(a)[1]


#: relative diagonal shifts that let LAPACK converge, per precision: far below its resolution
_EIGH_SHIFT = {torch.float32: 1e-6, torch.float64: 1e-12}


def _robust_eigh(solver, a: Tensor) -> Tensor:
    """``solver(a)`` for ``torch.linalg.eigvalsh`` or an eigenvector function of it.

    LAPACK's divide-and-conquer solver can fail to converge on the running covariance of
    low-rank embeddings (rows of exact zeros where a feature never fires, many equal
    eigenvalues; seen in float32 and in float64 on the default recipe). Then it solves
    a + δI, δ = 1e-6·max|a| in float32 (1e-12 in float64): the same eigenvectors, every
    eigenvalue moved by δ, which is taken back off; and last that in float64.
    """
    attempts = [(a, 0.0), (a, _EIGH_SHIFT.get(a.dtype, 0.0))]
    if a.dtype != torch.float64:
        attempts.append((a.double(), _EIGH_SHIFT[torch.float64]))
    for matrix, relative in attempts:
        shift = relative * float(matrix.detach().abs().max()) if relative else 0.0
        try:
            if not shift:
                return solver(matrix)
            eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
            out = solver(matrix + shift * eye)
        except torch.linalg.LinAlgError as error:
            failure = error
            continue
        return out - shift if solver is torch.linalg.eigvalsh else out
    raise failure


def spectral_distance(sigma_eigvals: Tensor, ref_eigvals: Tensor) -> Tensor:
    """Σᵢ (λᵢ↓(Σ) − λᵢ↓(Σ₀))² over all d eigenvalues, given Σ's k largest (k ≤ d).

    The eigenvalues of Σ that are not given are zero, so they add Σ_{i>k} λᵢ(Σ₀)².

    Shape:
        - sigma_eigvals: (k,), ascending (as eigh returns them).
        - ref_eigvals: (d,), descending.
    """
    k = sigma_eigvals.shape[0]
    head = (sigma_eigvals.flip(0) - ref_eigvals[:k]).square().sum()
    return head + ref_eigvals[k:].square().sum()


def batch_covariance_eigvals(zc: Tensor, fast: bool = True) -> Tensor:
    """Eigenvalues of Σ(z) = Z_cᵀZ_c/(n − 1), all of them or the n of the Gram form.

    With ``fast`` and n ≤ d they are those of the n×n matrix Z_cZ_cᵀ/(n − 1), which has the
    same non-zero eigenvalues (the other d − n are zero); otherwise of the d×d matrix.

    Shape:
        - zc: (n, d), centered rows.
        - output: (n,) when ``fast`` and n ≤ d, else (d,); ascending.
    """
    n, d = zc.shape
    gram = zc @ zc.T if fast and n <= d else zc.T @ zc
    return symmetric_eigvals(gram / (n - 1))


def norm_gap(mean: Tensor, mu0: Tensor) -> Tensor:
    """(‖μ‖ − ‖μ₀‖)² = min over orthogonal Q of ‖μ − Qᵀμ₀‖².

    Shape:
        - mean, mu0: (d,).
        - output: scalar.
    """
    return (torch.linalg.vector_norm(mean) - torch.linalg.vector_norm(mu0)).square()


class _SquaredGramGap(torch.autograd.Function):
    """‖D‖²_F of D = B + α·ZᵀZ (d, d), for Z (n, d) and a constant symmetric B, given D.

    The gradient, ∂‖D‖²/∂Z = 2α·Z(D + Dᵀ) = 4α·ZD, is one n×d by d×d product; autograd
    through the d×d product ZᵀZ would take two, plus several d×d temporaries.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, diff: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(z, diff)
        ctx.alpha = alpha
        flat = diff.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        z, diff = ctx.saved_tensors
        return (4 * ctx.alpha) * grad * (z @ diff), None, None


def squared_gram_gap(z: Tensor, diff: Tensor, alpha: float) -> Tensor:
    """‖D‖²_F for D = B + α·ZᵀZ given D (no gradient) and Z: differentiable in Z.

    The gradient 4α·ZD is one n×d by d×d product (:class:`_SquaredGramGap`).

    Shape:
        - z: (n, d); diff: (d, d), symmetric.
        - output: scalar.
    """
    return _SquaredGramGap.apply(z, diff, alpha)


def covariance_factor(cov: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """F with FFᵀ = Σ₀ from Σ₀'s top ``rank`` eigenpairs, and ‖FᵀF‖²_F = Σᵢ λᵢ², in float64.

    A covariance of N rows has rank ≤ N − 1, so ``rank = N − 1`` keeps all of it (up to the
    rounding of a float32 Σ₀). Negative rounding-level eigenvalues are clamped to zero.

    Shape:
        - cov: (d, d), symmetric.
        - output: (d, rank) and a scalar.
    """
    eigvals, vectors = torch.linalg.eigh(cov.detach().double())
    top = eigvals[cov.shape[0] - rank :].clamp_min(0)
    return vectors[:, cov.shape[0] - rank :] * top.sqrt(), top.square().sum()


def low_rank_covariance_gap(zc: Tensor, factor: Tensor, factor_sq_norm: Tensor, alpha: float):
    """‖α·Z_cᵀZ_c − FFᵀ‖²_F without d×d matrices, differentiable in Z_c.

    = α²‖Z_cZ_cᵀ‖²_F − 2α‖Z_cF‖²_F + ‖FᵀF‖²_F: an n×n and an n×r product, O(n·d·(n + r))
    forward and backward, against O(n·d²) for the d×d difference. The terms cancel, so the
    value is exact to float32 rounding of the largest term: about 1e-7 of the value for
    EfficientNet-Lite0's embeddings of real BreastMNIST batches (the d×d form, summing d²
    squares in float32, was 5e-5 off float64 there), and useless only for a batch whose
    covariance equals Σ₀ to float32 precision.

    Shape:
        - zc: (n, d), centered rows; factor: (d, r); factor_sq_norm: scalar.
        - output: scalar.
    """
    gram = zc @ zc.T
    projected = zc @ factor
    return alpha**2 * gram.square().sum() - 2 * alpha * projected.square().sum() + factor_sq_norm


class _GramNuclearNorm(torch.autograd.Function):
    """‖Fz‖_* from the k×k matrices K_z = zzᵀ and F (a constant), in K_z's precision.

    The singular values of Fz are the square roots of the eigenvalues μᵢ (eigenvectors wᵢ)
    of C = F K_z Fᵀ, and ∂/∂K_z Σᵢ √μᵢ = Σᵢ Fᵀwᵢwᵢᵀ F/(2√μᵢ), summed over the singular values
    above 1e-7 of the largest (below that, float32 inputs carry no information; the zero ones
    are not differentiable and get the zero subgradient).
    """

    @staticmethod
    def forward(ctx: Any, k_z: Tensor, f: Tensor) -> Tensor:
        mu, w = torch.linalg.eigh(f @ k_z @ f.T)
        sigma = mu.clamp_min(0).sqrt()
        keep = sigma > 1e-7 * sigma.max()
        inv = torch.where(keep, 0.5 / torch.where(keep, sigma, 1.0), 0.0)
        fw = f.T @ w
        ctx.save_for_backward((fw * inv) @ fw.T)
        return sigma.sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (g,) = ctx.saved_tensors
        return grad * g, None


def nuclear_norm_of_product(r: Tensor, z: Tensor, fast: bool = True) -> Tensor:
    """‖rᵀz‖_* (the sum of singular values of the d×d matrix rᵀz), differentiable in z.

    ``r`` is treated as a constant. With ``fast`` and k ≤ d, the triangular factor of the
    reduced QR factorization rᵀ = Q_rR_r (Q_r with orthonormal columns, also for
    rank-deficient r) gives ‖rᵀz‖_* = ‖Q_rR_rz‖_* = ‖R_rz‖_*, whose singular values come from
    the k×k matrix R_r(zzᵀ)R_rᵀ (in float64; see :class:`_GramNuclearNorm`): O(k²·d) in all.
    Otherwise the singular values of the d×d product.

    Shape:
        - r, z: (k, d).
        - output: scalar, the dtype of z.
    """
    k, d = z.shape
    if fast and k <= d:
        z64 = z.double()
        with torch.no_grad():
            r_factor = torch.linalg.qr(r.double().T, mode="r").R
        return _GramNuclearNorm.apply(z64 @ z64.T, r_factor).to(z.dtype)
    return torch.linalg.svdvals(r.detach().T @ z).sum()


def procrustes_distance(z_hat: Tensor, r_hat: Tensor) -> Tensor:
    """min over orthogonal Q of ‖Ẑ − R̂Q‖²_F = ‖Ẑ‖²_F + ‖R̂‖²_F − 2‖R̂ᵀẐ‖_* (clamped at 0).

    Shape:
        - z_hat, r_hat: (k, d).
        - output: scalar.
    """
    total = z_hat.square().sum() + r_hat.square().sum()
    return (total - 2 * nuclear_norm_of_product(r_hat, z_hat)).clamp_min(0)
