"""Streaming sufficient statistics, reduced across ranks under ``torch.distributed``.

:class:`StreamingMoments`: the mean and unbiased covariance of a stream of (n, d) batches,
accumulated exactly in float64 (count, mean, and the centered sum of outer products, merged
with Chan et al.'s pairwise update, which keeps the centering exact instead of subtracting two
large sums at the end). Not differentiable; used for reference statistics that are fitted
once. (The differentiable gather of a global batch, for losses on batch statistics, is
:func:`riftune.distributed.gather_global_batch`.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from riftune.distributed import communication_device, world_size


class StreamingMoments:
    """Count, mean and covariance of a stream of row vectors, exact in float64.

    The state is the count n, the mean μ and the centered scatter
    M = Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ. Two states merge exactly (Chan, Golub and LeVeque 1979):

    .. math::
        n = n_a + n_b,\\quad δ = μ_b − μ_a,\\quad μ = μ_a + δ\\,n_b/n,\\quad
        M = M_a + M_b + δδᵀ\\,n_a n_b / n

    so :meth:`update` over chunks, :meth:`merge` of partial states and :meth:`all_reduce`
    across ranks all give the statistics of the concatenated data.

    Args:
        dim: the feature size d.

    Shape:
        - update input: (n, d), any floating dtype and device (the state moves to the first
          batch's device).
        - :meth:`mean`: (d,) float64; :meth:`covariance`: (d, d) float64.
    """

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean: Tensor | None = None
        self._scatter: Tensor | None = None

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"expected a batch of shape (n, {self.dim}), got {tuple(x.shape)}; "
                "pass one row per sample"
            )
        return x.detach().to(torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor) -> StreamingMoments:
        """Add the rows of ``x`` (n, d); returns ``self``."""
        x = self._check(x)
        n = x.shape[0]
        if n == 0:
            return self
        mean = x.mean(0)
        xc = x - mean
        self._combine(n, mean, xc.T @ xc)
        return self

    def _combine(self, n: int, mean: Tensor, scatter: Tensor) -> None:
        if self.count == 0:
            self.count, self._mean, self._scatter = n, mean.clone(), scatter.clone()
            return
        assert self._mean is not None and self._scatter is not None
        mean, scatter = mean.to(self._mean.device), scatter.to(self._mean.device)
        total = self.count + n
        delta = mean - self._mean
        self._scatter = (
            self._scatter + scatter + torch.outer(delta, delta) * (self.count * n / total)
        )
        self._mean = self._mean + delta * (n / total)
        self.count = total

    @torch.no_grad()
    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold another accumulator's state into this one; returns ``self``."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {other.dim} into {self.dim}")
        if other.count:
            assert other._mean is not None and other._scatter is not None
            self._combine(other.count, other._mean, other._scatter)
        return self

    @torch.no_grad()
    def all_reduce(self) -> StreamingMoments:
        """Replace the state by that of the union of every rank's data; returns ``self``.

        A no-op without an initialized process group. Every rank must call it (it is a
        collective); ranks with no data take part with a zero count. Two collectives: the
        counts and sums first, which give the global mean, then each rank's scatter re-centred
        on that mean (the same merge formula as above, applied to all ranks at once).
        """
        if world_size() == 1:
            return self
        device = self._mean.device if self._mean is not None else communication_device()
        mean = (
            self._mean
            if self._mean is not None
            else torch.zeros(self.dim, dtype=torch.float64, device=device)
        )
        scatter = (
            self._scatter
            if self._scatter is not None
            else torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)
        )
        packed = torch.cat([mean.new_tensor([float(self.count)]), mean * self.count])
        dist.all_reduce(packed)
        total = round(packed[0].item())
        if total == 0:
            return self
        global_mean = packed[1:] / total
        delta = mean - global_mean
        centred = scatter + torch.outer(delta, delta) * self.count
        dist.all_reduce(centred)
        self.count, self._mean, self._scatter = total, global_mean, centred
        return self

    def mean(self) -> Tensor:
        """The mean μ (d,), float64."""
        if self.count == 0 or self._mean is None:
            raise ValueError("no rows were added; call update() with data first")
        return self._mean.clone()

    def covariance(self) -> Tensor:
        """The unbiased covariance M / (n − 1) (d, d), float64."""
        if self.count < 2 or self._scatter is None:
            raise ValueError(
                f"the covariance needs at least 2 rows, got {self.count}; add more data"
            )
        cov = self._scatter / (self.count - 1)
        return (cov + cov.T) / 2
