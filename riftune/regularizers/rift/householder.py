"""The learned rotation Q of RIFT's ``q="learned"``: a product of Householder reflections."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The largest block of Householder reflections applied at once: few large blocks suit a GPU
# (each block is three sequential kernels), smaller ones a CPU (the block Gram matrices cost
# b·d² multiply-adds).
BLOCK_BY_DEVICE = {"cuda": 512}
BLOCK_DEFAULT = 32


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
    (rank(Q − I) ≤ k), for k·d parameters and O(n·k·d) work instead of d² and O(n·d²). The
    reflections start in equal pairs, u_{2i−1} = u_{2i} = v_i, so Q = ∏H(v_i)² = I; from there
    the gradient reaches every rotation that moves span(v_1 … v_{k/2}) (m(d − m) + m(m − 1)/2
    directions, m = k/2).
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
        largest = BLOCK_BY_DEVICE.get(u.device.type, BLOCK_DEFAULT)
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
