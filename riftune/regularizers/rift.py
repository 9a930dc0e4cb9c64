"""RIFT: Representation Invariance FineTuning (arXiv 2503.07399), covariance and paired forms.

RIFT keeps a finetuned representation close to the pretrained one *up to an orthogonal map*.
Two ways to measure "close" live here, selected by ``match``:

* ``"covariance"`` (the paper's objective): the covariance of the finetuned embeddings of a batch
  is matched to the covariance Σ₀ of the pretrained embeddings over the training set, fitted
  once. No second model and no per-sample reference is needed while training.
* ``"paired"`` (the invariance the paper argues from, Z_ft ≈ Z_pre·Q): the finetuned embeddings
  of a batch are matched, sample by sample, to the pretrained embeddings of the same samples,
  which come from a per-sample cache filled once before training (or a frozen forward pass).

``q`` chooses the orthogonal map: ``"identity"`` (none), ``"learned"`` (one rotation trained with
the model) or ``"optimal"`` (the best rotation for each batch, in closed form, never stored).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from riftune.errors import UserError
from riftune.options import (
    Section,
    flag,
    fraction,
    non_negative,
    option,
    positive,
    positive_finite,
)
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register
from riftune.stats import StreamingMoments, gather_global_batch

# `--reg rift` with no other flags: chosen by the rule in RESULTS.md ("Which RIFT variant")
CLI_DEFAULT_MATCH = "paired"
CLI_DEFAULT_Q = "optimal"
CLI_DEFAULT_LAM = 0.1
# Learned Q rotates at most this many dimensions by default: in the CPU grid (RESULTS.md,
# "Learned Q of limited rank") rank 64 matched all d = 1280 dimensions on validation AUC and
# CKA at 1/20 of the parameters and a fraction of the cost (BENCHMARKS.md).
DEFAULT_Q_RANK = 64

MATCHES = ("covariance", "paired")
ROTATIONS = ("identity", "learned", "optimal")
STATISTICS = ("batch", "ema")
REFERENCE_SOURCES = ("cache", "teacher")

_NORM_EPS = 1e-12
# The largest block of Householder reflections applied at once: few large blocks suit a GPU
# (each block is three sequential kernels), smaller ones a CPU (the block Gram matrices cost
# b·d² multiply-adds).
_HOUSEHOLDER_BLOCK = {"cuda": 512}
_HOUSEHOLDER_BLOCK_DEFAULT = 32
# Symmetric eigenproblems up to this size are solved in float64 (cheap at that size, and it
# keeps small eigenvalues accurate); larger ones in the input's precision.
_FLOAT64_EIGH_MAX = 512


class HouseholderRotation(nn.Module):
    r"""A learnable rotation Q ∈ SO(d): a product of Householder reflections H(u) = I − 2uuᵀ/‖u‖².

    With ``rank=None``, d reflections with the parameter ``reflectors`` U = [u_1 … u_d] (d, d):

    .. math::
        Q = −H(u_1)H(u_2)⋯H(u_d)

    Any rotation is such a product. U starts at I, where each H(e_i) flips coordinate i, so
    Q = −(−I) = I; there the reflected directions e_i span ℝᵈ, so the gradient reaches every
    rotation direction from the first step.

    With ``rank=k`` (even, 2 ≤ k < d; k ≥ d means all of ℝᵈ as above), k reflections, U (d, k)
    and Q = H(u_1)⋯H(u_k): the rotations that move at most a k-dimensional subspace
    (rank(Q − I) ≤ k), for k·d parameters and O(n·k·d) work instead of d² and O(n·d²). The reflections start in equal pairs,
    u_{2i−1} = u_{2i} = v_i, so Q = ∏H(v_i)² = I; from there the gradient reaches every
    rotation that moves span(v_1 … v_{k/2}) (m(d − m) + m(m − 1)/2 directions, m = k/2).
    :meth:`start_at` chooses the v_i (:meth:`RIFT.fit_reference` uses the top principal
    directions of the pretrained embeddings); before that they are e_1 … e_{k/2}.

    Every U gives an orthogonal Q to float precision (no drift, however long it is trained;
    nothing to re-orthogonalize), and each H is invariant to the scale of its u.

    Q is never formed while training. Rows are rotated block by block with the compact WY
    ("UT") form of b consecutive reflections, H(u_1)⋯H(u_b) = I − U_b T_b⁻¹U_bᵀ with
    T_b = striu(U_bᵀU_b) + ½diag(U_bᵀU_b) (Joffrain et al. 2006). The b×b inverses T_b⁻¹ come
    from one batched triangular solve; each block is then three products on the n rows,
    x ← x − ((xU_b)T_b⁻ᵀ)U_bᵀ, so the d×b blocks are never multiplied by T_b⁻¹. For n rows and
    k reflections (k = d without ``rank``) that is 2·n·k·d + b·k·d + n·b·k multiply-adds and
    3·k/b sequential kernels: no d×d factorization, no d×d product.
    """

    def __init__(self, dim: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not (isinstance(rank, int) and rank >= 2 and rank % 2 == 0):
            raise ValueError(
                f"the rank of a learned rotation must be an even integer >= 2 (at least d = {dim}"
                f" or None: all dimensions); got {rank!r}"
            )
        if rank is None or rank >= dim:
            self.rank = None
            self.sign = -1.0
            self.reflectors = nn.Parameter(torch.eye(dim))
        else:
            self.rank = rank
            self.sign = 1.0
            self.reflectors = nn.Parameter(torch.eye(dim, rank // 2).repeat_interleave(2, dim=1))

    @torch.no_grad()
    def start_at(self, directions: Tensor) -> None:
        """Reset Q to I with its reflection pairs at ``directions`` (d, k/2), any nonzero columns.

        Only for ``rank=k``: the rotations reachable from the first step are those that move
        the span of these directions.
        """
        if self.rank is None:
            raise ValueError("start_at applies to a rotation of limited rank only")
        expected = (self.reflectors.shape[0], self.rank // 2)
        if tuple(directions.shape) != expected:
            raise ValueError(
                f"directions must have shape {expected}, got {tuple(directions.shape)}"
            )
        self.reflectors.copy_(directions.repeat_interleave(2, dim=1))

    def _blocks(self, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
        """[(U_b, T_b⁻¹)] for the consecutive blocks of reflections, in order.

        U_b (d, b) are column views of the reflectors (one concatenation in the backward pass),
        T_b⁻¹ (b, b) upper triangular.
        """
        u = self.reflectors.to(dtype)
        k = u.shape[1]
        largest = _HOUSEHOLDER_BLOCK.get(u.device.type, _HOUSEHOLDER_BLOCK_DEFAULT)
        block = -(-k // -(-k // largest))  # equal blocks of at most `largest`
        columns = u.split(block, dim=1)
        blocks: list[tuple[Tensor, Tensor]] = []
        for size in sorted({c.shape[1] for c in columns}, reverse=True):
            # all blocks of one size at once (only the last can be smaller: order is kept)
            group = [c for c in columns if c.shape[1] == size]
            gram = torch.stack([c.T @ c for c in group])  # U_bᵀU_b
            t = gram.triu(1) + torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1) / 2)
            eye = torch.eye(size, dtype=dtype, device=u.device).expand_as(t)
            t_inv = torch.linalg.solve_triangular(t, eye, upper=True)
            blocks.extend(zip(group, t_inv.unbind(0), strict=True))
        return blocks

    def rotate_rows(self, x: Tensor, transpose: bool = False) -> Tensor:
        """``x @ Q.T`` (each row x_i mapped to Q x_i), or ``x @ Q`` with ``transpose``.

        Shape:
            - x: (n, d).
            - output: (n, d).
        """
        blocks = self._blocks(x.dtype)
        if transpose:  # x Q = ±x Q_1⋯Q_B, x Q_b = x − ((x U_b) T_b⁻¹) U_bᵀ
            for u, t_inv in blocks:
                x = torch.addmm(x, (x @ u) @ t_inv, u.T, alpha=-1)
        else:  # x Qᵀ = ±x Q_Bᵀ⋯Q_1ᵀ, x Q_bᵀ = x − ((x U_b) T_b⁻ᵀ) U_bᵀ
            for u, t_inv in reversed(blocks):
                x = torch.addmm(x, (x @ u) @ t_inv.T, u.T, alpha=-1)
        return -x if self.sign < 0 else x

    def matrix(self) -> Tensor:
        """Q as a dense (d, d) matrix (differentiable; O(k·d²), for inspection)."""
        d = self.reflectors.shape[0]
        eye = torch.eye(d, dtype=self.reflectors.dtype, device=self.reflectors.device)
        return self.rotate_rows(eye).T


def symmetric_eigvals(a: Tensor) -> Tensor:
    """Ascending eigenvalues of a symmetric matrix, differentiable, in ``a``'s dtype.

    Up to 512×512 they are computed in float64. Gradients go through eigenvectors only
    (V diag(g) Vᵀ, no eigenvalue gaps), so they stay finite for repeated or zero eigenvalues.

    Shape:
        - a: (k, k), symmetric.
        - output: (k,).
    """
    if a.shape[-1] <= _FLOAT64_EIGH_MAX:
        return torch.linalg.eigvalsh(a.double()).to(a.dtype)
    return torch.linalg.eigvalsh(a)


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


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _choice(name: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


@register
class RIFT(Regularizer):
    r"""RIFT regularizer: keep the finetuned embeddings the pretrained ones up to a rotation.

    Paper: "RIFT", arXiv 2503.07399 (https://arxiv.org/abs/2503.07399). ``q="optimal"`` is
    what the design notes call "spectral".

    Notation: z is the (n, d) batch of finetuned embeddings, μ(z) its mean, Z_c = z − μ(z) its
    centered rows, Σ(z) = Z_cᵀZ_c/(n − 1) its unbiased covariance; μ₀ and Σ₀ are the mean and
    unbiased covariance of the pretrained embeddings over the training set
    (:meth:`fit_reference`); λᵢ↓(·) are eigenvalues in descending order; Q is orthogonal;
    w = ``mean_weight``.

    **match="covariance"** (the paper's objective). With the statistics Σ̄, μ̄ below,

    .. math::
        L = \|Σ̄ − QᵀΣ₀Q\|²_F / c_Σ + w\,\|μ̄ − Qᵀμ₀\|² / c_μ

    - ``q="identity"``: Q = I, so L = ‖Σ̄ − Σ₀‖²_F/c_Σ + w‖μ̄ − μ₀‖²/c_μ.
    - ``q="learned"``: Q = :attr:`rotation`, trained with the model.
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

    **match="paired"**: ``forward(z, reference)`` where ``reference`` holds the pretrained
    embeddings of the same n samples (treated as a constant). With
    ẑ = Z_c/‖Z_c‖_F and r̂ = R_c/‖R_c‖_F (R_c the centered reference),

    .. math::
        L = \|ẑ − r̂Q\|²_F + w\,n\,\|μ(z)/\|Z_c\|_F − Qᵀμ(r)/\|R_c\|_F\|²

    which is ‖Ẑ − R̂Q‖²_F for the batches Ẑ, R̂ with the scaled mean appended as one more row
    (√(w·n)·μ/‖·‖_F); with w = 1 that is the uncentered batches z/‖Z_c‖_F and r/‖R_c‖_F.

    - ``q="identity"``: Q = I.
    - ``q="learned"``: Q = :attr:`rotation`.
    - ``q="optimal"``: the orthogonal Procrustes minimum
      ‖Ẑ‖²_F + ‖R̂‖²_F − 2‖R̂ᵀẐ‖_* (= 2 − 2‖r̂ᵀẑ‖_* for w = 0; ‖·‖_* the nuclear norm).

    The paired loss is scale-free by construction: ``normalize`` has no effect and
    ``stats="ema"`` does not apply (a running average of batches of different samples does not
    pair with anything). It needs no fitted statistics.

    **What each variant preserves.** A covariance says nothing about which sample sits where:
    covariance/identity keeps the second moments in the original coordinates; learned and
    optimal keep only their spectrum (the shape of the distribution up to a rotation, a
    single one shared across steps for learned, any one per batch for optimal). Matching a
    covariance can leave every individual embedding free to move. Paired matching keeps each
    sample's embedding relative to the others (after centering and a global scale): identity
    in the original coordinates, learned up to one rotation shared across steps, optimal up
    to any rotation per batch, which is exactly the invariance Z_ft ≈ Z_pre·Q; it preserves
    all inner products between the batch's centered embeddings.

    **Learned Q** (:class:`HouseholderRotation`, the submodule ``learned_rotation``) is a
    product of d Householder reflections, starting at Q = I. Every parameter value gives an
    orthogonal Q to float precision, so it stays orthogonal however long it is trained. It
    covers the rotations SO(d), which reach the same minima as O(d) for covariance matching,
    and for paired matching whenever n < d (for n > d the Procrustes optimum may need a
    reflection). With ``q_rank=k`` < d (the default, k = 64) it is a product of k reflections
    instead: a rotation that moves at most a k-dimensional subspace, started (by
    :meth:`fit_reference`) so that it can move the top k/2 principal directions of the
    pretrained embeddings; k·d parameters instead of d², and O(n·k·d) work. Give RIFT's
    parameters to the optimizer along with the model's.

    **Cost per call** (n rows, d features; under ``torch.distributed`` n is the global batch):

    - covariance/identity: one d×n by n×d product into a d×d matrix, O(n·d²) time and O(d²)
      memory (the difference Σ(z) − Σ₀ is formed once, which avoids cancellation); the
      gradient is one n×d by d×d product (:class:`_SquaredGramGap`).
    - covariance/learned: plus the rotation of n (+1) rows, O(n·d²) with d/b sequential
      blocks of b ≤ 512 reflections on a GPU (≤ 32 elsewhere); no d×d factorization or
      d×d product. With ``q_rank=k``: O(n·k·d) and k/b blocks.
    - covariance/optimal: an n×n Gram matrix, O(n²·d), and its eigenvalues (in float64),
      since it shares Σ(z)'s non-zero spectrum (n > d: the d×d covariance); Σ₀'s
      eigenvalues are computed once by :meth:`fit_reference`.
    - stats="ema": the d×d estimate costs O(n·d²) as above; with ``learned`` plus the
      rotation of n (+1) rows; with ``optimal`` a d×d eigendecomposition and product, O(d³),
      once every ``eigh_every`` calls.
    - paired/identity: O(n·d); paired/learned: plus the rotation of n (+1) rows, O(n·d²)
      (O(n·k·d) with ``q_rank=k``);
      paired/optimal: a QR factorization of the d×n reference (no gradient), an n×n Gram
      matrix (O(n²·d)) and one n×n eigendecomposition, in float64.
    - On a GPU, ``torch.linalg`` eigensolvers wait for the device (an error check), so the
      optimal variants synchronize once per call; in one process no other variant does
      (under ``torch.distributed`` the gather exchanges batch sizes, which also waits).

    Statistics are computed in float32 or wider (autocast is disabled inside and bf16/fp16
    inputs are upcast). Under an initialized ``torch.distributed`` process group the batch
    (and the reference) are all-gathered differentiably (:func:`riftune.stats.gather_global_batch`),
    so every formula above holds for the global batch and DDP-averaged gradients equal those
    of one process on it.

    Args:
        dim: the embedding size d.
        match: ``"covariance"`` or ``"paired"``.
        q: ``"identity"``, ``"learned"`` or ``"optimal"``.
        q_rank: ``q="learned"`` only: an even k ≥ 2 for a rotation that moves at most a
            k-dimensional subspace (k ≥ d or None: all of ℝᵈ, d reflections); default 64.
        normalize: divide by ‖Σ₀‖²_F (and tr Σ₀); covariance matching only.
        mean_weight: w ≥ 0, the weight of the mean term.
        stats: ``"batch"`` or ``"ema"`` (covariance matching only).
        momentum: m ∈ (0, 1], the weight of the current batch in the running estimates.
        eigh_every: k ≥ 1; ``stats="ema"`` with ``q="optimal"`` recomputes the eigenvectors
            of the running covariance every k training calls (1: every call, exact).
        reference_source: where paired references come from during training: ``"cache"``
            (pretrained embeddings of each training sample computed once before training)
            or ``"teacher"`` (a frozen forward pass each step). Paired matching only.

    Shape:
        - z: (n, d), n ≥ 2, any floating dtype.
        - reference: (n, d), the pretrained embeddings of the same samples (paired only).
        - output: scalar, float32 (float64 for float64 inputs).
    """

    name = "rift"
    min_batch_size = 2  # a covariance or a centred pair needs two samples
    default_lam = CLI_DEFAULT_LAM
    penalizes_features_only = True

    def __init__(
        self,
        dim: int,
        match: str = "covariance",
        q: str = "identity",
        q_rank: int | None = DEFAULT_Q_RANK,
        normalize: bool = True,
        mean_weight: float = 0.0,
        stats: str = "batch",
        momentum: float = 0.1,
        reference_source: str = "cache",
        eigh_every: int = 10,
    ):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer (the embedding size), got {dim!r}")
        self.dim = dim
        self.match = _choice("match", match, MATCHES)
        self.q = _choice("q", q, ROTATIONS)
        self.stats = _choice("stats", stats, STATISTICS)
        _choice("reference_source", reference_source, REFERENCE_SOURCES)
        if not (math.isfinite(mean_weight) and mean_weight >= 0):
            raise ValueError(f"mean_weight must be a finite number >= 0, got {mean_weight}")
        if not (0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not (isinstance(eigh_every, int) and eigh_every >= 1):
            raise ValueError(f"eigh_every must be an integer >= 1, got {eigh_every!r}")
        if match == "paired" and stats == "ema":
            raise ValueError(
                "stats='ema' applies to match='covariance' only; use stats='batch' with paired"
            )
        if q_rank not in (None, DEFAULT_Q_RANK) and q != "learned":
            raise ValueError(f"q_rank applies to q='learned' only, got q={q!r}")
        if match == "covariance" and reference_source != "cache":
            raise ValueError(
                "reference_source applies to match='paired' only; covariance matching uses "
                "fitted statistics"
            )
        self.normalize = normalize
        self.mean_weight = float(mean_weight)
        self.momentum = float(momentum)
        self.eigh_every = eigh_every
        self.reference = reference_source if match == "paired" else None

        self.register_buffer("ref_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("ref_mean", torch.zeros(dim))
        self.register_buffer("ref_cov", torch.zeros(dim, dim))
        self.register_buffer("ref_cov_sq_norm", torch.zeros(()))
        self.register_buffer("ref_trace", torch.zeros(()))
        if match == "covariance" and q == "optimal":
            self.register_buffer("ref_eigvals", torch.zeros(dim))
        if stats == "ema":
            self.register_buffer("running_cov", torch.zeros(dim, dim))
            self.register_buffer("running_mean", torch.zeros(dim))
        self._spectral_age = 0  # training calls since fit; mirrors the buffer without a sync
        if match == "covariance" and q == "optimal" and stats == "ema":
            self.register_buffer("spectral_target", torch.zeros(dim, dim))
            self.register_buffer("spectral_age", torch.zeros((), dtype=torch.long))
        if q == "learned":
            self.learned_rotation = HouseholderRotation(dim, rank=q_rank)
        self._fitted = False
        self.register_load_state_dict_post_hook(_sync_fitted_flag)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, match={self.match!r}, q={self.q!r}"
            + (f", q_rank={self.learned_rotation.rank}" if self.q == "learned" else "")
            + f", normalize={self.normalize}, "
            f"mean_weight={self.mean_weight}, stats={self.stats!r}, momentum={self.momentum}, "
            f"eigh_every={self.eigh_every}, reference={self.reference!r}"
        )

    # ----------------------------------------------------------------- reference statistics

    @torch.no_grad()
    def fit_reference(
        self, features: Tensor | Iterable[Tensor], *, all_reduce: bool = True
    ) -> RIFT:
        """Fit μ₀ and the unbiased Σ₀ of the pretrained embeddings, streaming, in float64.

        Also stores ‖Σ₀‖²_F, tr Σ₀, Σ₀'s eigenvalues (``q="optimal"`` covariance) and resets
        the running estimates (``stats="ema"``) to Σ₀, μ₀; all are buffers, so
        ``state_dict()`` round-trips them. A learned Q with ``q_rank=k`` is reset to I with its
        reflection pairs at Σ₀'s top k/2 eigenvectors (:meth:`HouseholderRotation.start_at`).

        Args:
            features: an (N, d) tensor, or an iterable of (n, d) tensors (e.g. one per batch).
            all_reduce: under an initialized ``torch.distributed``, treat ``features`` as this
                rank's shard and combine the statistics of all ranks (every rank must call).
                Pass ``False`` when every rank holds all the data.

        Returns:
            ``self``.
        """
        moments = StreamingMoments(self.dim)
        chunks = [features] if isinstance(features, Tensor) else features
        for chunk in chunks:
            if not isinstance(chunk, Tensor):
                raise ValueError(
                    f"reference features must be tensors of shape (n, {self.dim}), "
                    f"got {type(chunk).__name__}"
                )
            self._check_rows(chunk, "reference features", min_rows=0)
            if not torch.isfinite(chunk).all():
                raise ValueError(
                    "reference features contain NaN or infinite values; check the pretrained "
                    "model's embeddings"
                )
            moments.update(chunk)
        if all_reduce:
            moments.all_reduce()
        if moments.count < 2:
            raise ValueError(f"fit_reference needs at least 2 reference rows, got {moments.count}")
        cov = moments.covariance()
        sq_norm = cov.square().sum()
        if self.normalize and self.match == "covariance" and sq_norm == 0:
            raise ValueError(
                "the reference features have zero variance, so normalize=True would divide "
                "by zero; check the features or pass normalize=False"
            )
        self.ref_count.fill_(moments.count)
        self.ref_mean.copy_(moments.mean())
        self.ref_cov.copy_(cov)
        self.ref_cov_sq_norm.copy_(sq_norm)
        self.ref_trace.copy_(torch.trace(cov))
        if hasattr(self, "ref_eigvals"):
            self.ref_eigvals.copy_(torch.linalg.eigvalsh(cov).flip(0).clamp_min(0))
        if self.q == "learned" and self.learned_rotation.rank is not None:
            top = self.learned_rotation.rank // 2
            _, vectors = torch.linalg.eigh(cov)  # float64: float32 LAPACK can fail here
            self.learned_rotation.start_at(vectors[:, -top:].flip(1))
        if self.stats == "ema":
            self.running_cov.copy_(cov)
            self.running_mean.copy_(moments.mean())
        if hasattr(self, "spectral_age"):
            self.spectral_age.zero_()
            self._spectral_age = 0
        self._fitted = True
        return self

    # ----------------------------------------------------------------------- the rotation

    @property
    def rotation(self) -> Tensor:
        """Q (d, d): the learned rotation (differentiable), or I for ``q="identity"``.

        ``q="optimal"`` stores none (the optimal Q depends on the batch): ValueError.
        """
        if self.q == "optimal":
            raise ValueError(
                "q='optimal' stores no rotation: the best Q is found per batch in closed form"
            )
        if self.q == "identity":
            return torch.eye(self.dim, device=self.ref_mean.device, dtype=self.ref_mean.dtype)
        return self.learned_rotation.matrix()

    # --------------------------------------------------------------------------- forward

    def _check_rows(self, x: Tensor, what: str, min_rows: int = 2) -> None:
        if x.dim() != 2:
            raise ValueError(
                f"{what} must be a 2-D (n, d) tensor, got shape {tuple(x.shape)}; flatten "
                "or pool the features first"
            )
        if x.shape[1] != self.dim:
            raise ValueError(
                f"{what} have {x.shape[1]} features but RIFT was built with dim={self.dim}"
            )
        if x.shape[0] < min_rows:
            raise ValueError(
                f"{what} need at least {min_rows} rows for batch statistics, got {x.shape[0]}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}")

    def forward(self, z: Tensor, reference: Tensor | None = None) -> Tensor:
        """The RIFT loss of a batch (see the class docstring for every formula).

        Args:
            z: finetuned embeddings of the batch (n, d), with gradient.
            reference: pretrained embeddings of the same samples (n, d); paired matching only.

        Returns:
            A scalar tensor.
        """
        self._check_rows(z, "embeddings")
        if self.match == "paired":
            if reference is None:
                raise ValueError(
                    "match='paired' needs forward(z, reference) with the pretrained "
                    "embeddings of the same samples"
                )
            self._check_rows(reference, "reference embeddings")
            if reference.shape[0] != z.shape[0]:
                raise ValueError(
                    f"reference has {reference.shape[0]} rows but the batch has {z.shape[0]}; "
                    "pass the pretrained embeddings of the same samples"
                )
        else:
            if reference is not None:
                raise ValueError(
                    "match='covariance' takes no per-sample reference; call forward(z), or "
                    "build RIFT(match='paired')"
                )
            if not self._fitted:
                raise ValueError(
                    "RIFT(match='covariance') has no reference statistics; call "
                    "fit_reference(pretrained_embeddings) before forward"
                )
        dtype = _compute_dtype(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = gather_global_batch(z).to(dtype)
            if self.match == "paired":
                assert reference is not None
                ref = gather_global_batch(reference.detach()).to(dtype)
                return self._paired(z, ref)
            return self._covariance(z)

    def _covariance(self, z: Tensor) -> Tensor:
        dtype, n = z.dtype, z.shape[0]
        mean = z.mean(0)
        zc = z - mean
        sigma0 = self.ref_cov.to(dtype)
        mu0 = self.ref_mean.to(dtype)
        with_mean = self.mean_weight > 0
        if self.stats == "ema":
            m = self.momentum
            if self.q == "learned":  # running estimates in Q's frame: rotate this batch's rows
                rows = self.learned_rotation.rotate_rows(torch.cat([zc, mean[None]]))
                zc, mean = rows[:n], rows[n]
            # Σ̄ = (1 − m)·R + m·Z_cᵀZ_c/(n − 1), μ̄ = (1 − m)·r + m·μ(z), in one kernel each
            with torch.no_grad():
                sigma = torch.addmm(
                    self.running_cov.to(dtype), zc.T, zc, beta=1 - m, alpha=m / (n - 1)
                )
            mean = torch.lerp(self.running_mean.to(dtype), mean, m)
            target = self._spectral_target(sigma) if self.q == "optimal" else sigma0
            if self.training:
                with torch.no_grad():
                    self.running_cov.copy_(sigma)
                    self.running_mean.copy_(mean)
            cov_term = _SquaredGramGap.apply(zc, sigma - target, m / (n - 1))
        elif self.q == "optimal":
            cov_term = spectral_distance(batch_covariance_eigvals(zc), self.ref_eigvals.to(dtype))
        else:
            if self.q == "learned":  # Σ(Z_cQᵀ) = QΣ(z)Qᵀ: rotate the n rows (and the mean)
                rows = self.learned_rotation.rotate_rows(
                    torch.cat([zc, mean[None]]) if with_mean else zc
                )
                zc, mean = (rows[:n], rows[n]) if with_mean else (rows, mean)
            with torch.no_grad():
                diff = torch.addmm(sigma0, zc.T, zc, beta=-1, alpha=1 / (n - 1))
            cov_term = _SquaredGramGap.apply(zc, diff, 1 / (n - 1))
        if self.normalize:
            cov_term = cov_term / self.ref_cov_sq_norm.to(dtype)
        if not with_mean:
            return cov_term
        if self.q == "optimal":
            mean_term = _norm_gap(mean, mu0)
        else:
            mean_term = (mean - mu0).square().sum()
        if self.normalize:
            mean_term = mean_term / self.ref_trace.to(dtype)
        return cov_term + self.mean_weight * mean_term

    def _spectral_target(self, sigma: Tensor) -> Tensor:
        """T = V diag(λ↓(Σ₀)) Vᵀ for the running Σ̄ (d, d): recomputed from Σ̄'s eigenvectors V
        when the training-call count is a multiple of ``eigh_every``, else the stored one."""
        if self._spectral_age % self.eigh_every == 0:
            with torch.no_grad():
                a = sigma.detach()
                _, vectors = torch.linalg.eigh(
                    a.double() if a.shape[-1] <= _FLOAT64_EIGH_MAX else a
                )
                ascending = self.ref_eigvals.flip(0).to(vectors.dtype)
                target = ((vectors * ascending) @ vectors.T).to(sigma.dtype)
            if self.training:
                self.spectral_target.copy_(target)
        else:
            target = self.spectral_target.to(sigma.dtype)
        if self.training:
            self._spectral_age += 1
            self.spectral_age.fill_(self._spectral_age)
        return target

    def _paired(self, z: Tensor, ref: Tensor) -> Tensor:
        n = z.shape[0]
        z_mean, r_mean = z.mean(0), ref.mean(0)
        zc, rc = z - z_mean, ref - r_mean
        z_scale = torch.linalg.vector_norm(zc).clamp_min(_NORM_EPS)
        r_scale = torch.linalg.vector_norm(rc).clamp_min(_NORM_EPS)
        z_hat, r_hat = zc / z_scale, rc / r_scale
        if self.mean_weight > 0:
            factor = math.sqrt(self.mean_weight * n)
            z_hat = torch.cat([z_hat, (factor * z_mean / z_scale)[None]])
            r_hat = torch.cat([r_hat, (factor * r_mean / r_scale)[None]])
        if self.q == "optimal":
            total = z_hat.square().sum() + r_hat.square().sum()
            return (total - 2 * nuclear_norm_of_product(r_hat, z_hat)).clamp_min(0)
        if self.q == "learned":  # r̂Q: rows r̂ᵢ mapped to Qᵀr̂ᵢ
            r_hat = self.learned_rotation.rotate_rows(r_hat, transpose=True)
        diff = z_hat - r_hat
        return torch.dot(diff.view(-1), diff.view(-1))

    # ------------------------------------------------------------------- riftune protocol

    def prepare(self, pretrained: PretrainedView) -> None:
        """Fit the reference statistics from the pretrained training-set embeddings.

        Every rank holds all of them (see :class:`PretrainedView`), so nothing is reduced.
        """
        self.fit_reference(pretrained.train_embeddings, all_reduce=False)

    def penalty(self, step: StepInputs) -> Tensor:
        """``self(embeddings)``, or ``self(embeddings, reference)`` for paired matching."""
        if self.match == "paired":
            if step.reference is None:
                raise ValueError(
                    "RIFT(match='paired') needs reference embeddings in StepInputs; the engine "
                    f"must supply them from {self.reference!r}"
                )
            return self(step.embeddings, step.reference)
        return self(step.embeddings)

    Options: ClassVar[type]  # RiftOptions, below (``--rift-*``)

    @classmethod
    def from_options(cls, options: RiftOptions, dim: int) -> RIFT:
        """RIFT as ``--reg rift`` builds it; ``options`` are already checked."""
        q_rank = options.q_rank if options.q == "learned" else DEFAULT_Q_RANK
        rift = cls(
            dim,
            match=options.match,
            q=options.q,
            q_rank=None if q_rank == "all" else q_rank,
            normalize=options.normalize,
            mean_weight=options.mean_weight,
            stats=options.stats,
            momentum=options.momentum,
            reference_source=options.reference,
            eigh_every=options.eigh_every,
        )
        rift.param_lr = options.q_lr
        return rift


def _q_rank(text: str) -> int | str:
    """``--rift-q-rank``: an integer, or ``all`` (every dimension)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an even integer or 'all', got {text!r}"
        ) from None


def _even_rank(value: int | str | None) -> str | None:
    if value is None or value == "all" or (value >= 2 and value % 2 == 0):
        return None
    return "must be even and >= 2, or 'all'"


@dataclass
class RiftOptions(Section):
    """``--reg rift``'s options (``--rift-*``); defaults are the CLI's (RESULTS.md's rule)."""

    flag_prefix: ClassVar[str] = "rift"
    match: Literal["covariance", "paired"] = option(
        CLI_DEFAULT_MATCH,
        "what RIFT matches: 'covariance' matches the batch covariance to the pretrained "
        "covariance (no per-sample reference); 'paired' matches each sample's embedding to its "
        "pretrained embedding, up to centering, scale and Q",
    )
    q: Literal["identity", "learned", "optimal"] = option(
        CLI_DEFAULT_Q,
        "the orthogonal map Q: 'identity' (none), 'learned' (one rotation trained with the "
        "model) or 'optimal' (the best rotation per batch, in closed form)",
    )
    q_rank: int | Literal["all"] | None = option(
        None,
        f"--rift-q learned: rotate at most a K-dimensional subspace (K/2 pairs of Householder "
        "reflections, started at the top principal directions of the pretrained embeddings; K "
        "even): K·d parameters and O(n·K·d) work; 'all' (or K >= d) rotates all d dimensions: "
        f"d² parameters, O(n·d²) (default with learned Q: {DEFAULT_Q_RANK})",
        parse=_q_rank,
        check=_even_rank,
        metavar="K",
    )
    q_lr: float | None = option(
        None,
        "--rift-q learned: the learning rate of Q's reflectors (AdamW, no weight decay, the "
        "model's schedule). Q enters the loss only through lam * penalty and AdamW's steps "
        "ignore the scale of the gradient, so this, not --lam, sets how fast Q turns "
        "(default: --head-lr)",
        check=positive_finite,
        metavar="LR",
    )
    stats: Literal["batch", "ema"] = option(
        "batch",
        "covariance statistics: 'batch' (this batch's) or 'ema' (a running estimate updated "
        "by each batch; covariance matching only)",
    )
    momentum: float = option(
        0.1,
        "weight of the current batch in the running estimate, in (0, 1] (--rift-stats ema)",
        check=fraction,
        metavar="M",
    )
    eigh_every: int = option(
        10,
        "--rift-stats ema with --rift-q optimal: recompute the eigenvectors of the running "
        "covariance every K steps (1: every step, exact; larger: cheaper, an upper bound in "
        "between)",
        check=positive,
        metavar="K",
    )
    mean_weight: float = option(
        0.0,
        "weight of the term that also matches the mean embedding",
        check=non_negative,
        metavar="W",
    )
    normalize: bool = option(
        True,
        "divide the covariance loss by the squared Frobenius norm of the pretrained "
        "covariance, so the regularization weight means the same across backbones",
    )
    reference: Literal["cache", "teacher"] = option(
        "cache",
        "paired matching: take pretrained embeddings from a cache filled once before training "
        "('cache') or from a frozen forward pass each step ('teacher')",
    )

    def check(self) -> None:
        """The rules across flags; RIFT's constructor keeps the same rules for Python callers."""
        if self.q == "learned":
            if self.q_rank is None:
                self.q_rank = DEFAULT_Q_RANK
        else:
            for name in ("q_rank", "q_lr"):
                if getattr(self, name) is not None:
                    raise UserError(
                        f"{flag(RiftOptions, name)} applies to --rift-q learned only, got "
                        f"--rift-q {self.q}"
                    )
        if self.match == "paired" and self.stats == "ema":
            raise UserError("--reg rift: --rift-stats ema applies to --rift-match covariance only")
        if self.match == "covariance" and self.reference != "cache":
            raise UserError(
                "--rift-reference applies to --rift-match paired only; covariance matching uses "
                "fitted statistics"
            )

    def to_dict(self) -> dict:
        """The options that apply: Q's rank and learning rate only with learned Q."""
        values = super().to_dict()
        if self.q != "learned":
            del values["q_rank"], values["q_lr"]
        return values

    @classmethod
    def from_legacy(cls, values: dict) -> dict:
        """Values of a config.yaml written before typed configs: every flag was stored, so
        drop the learned-Q options of a run without learned Q; ``q_rank: null`` meant 'all'."""
        values = dict(values)
        if values.get("q", CLI_DEFAULT_Q) != "learned":
            values.pop("q_rank", None)
            values.pop("q_lr", None)
        elif "q_rank" in values and values["q_rank"] is None:
            values["q_rank"] = "all"
        if values.get("reference") is None:
            values.pop("reference", None)
        return values


RIFT.Options = RiftOptions


def _norm_gap(mean: Tensor, mu0: Tensor) -> Tensor:
    """(‖μ‖ − ‖μ₀‖)² = min over orthogonal Q of ‖μ − Qᵀμ₀‖²."""
    return (torch.linalg.vector_norm(mean) - torch.linalg.vector_norm(mu0)).square()


def _sync_fitted_flag(module: nn.Module, incompatible_keys: Any) -> None:
    module._fitted = bool(module.ref_count.item() >= 2)
    if hasattr(module, "spectral_age"):
        module._spectral_age = int(module.spectral_age.item())
