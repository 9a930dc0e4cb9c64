"""RIFT's pure math (rift/functional.py): fast paths against dense and NumPy computations,
and the eigensolver's recovery where LAPACK fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.regularizers.rift import (
    batch_covariance_eigvals,
    functional,
    nuclear_norm_of_product,
    spectral_distance,
)


def test_low_rank_covariance_gap_is_the_dense_frobenius_gap():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(9, 30, generator=gen, dtype=torch.float64)
    cov = torch.cov(rows.T)
    factor, sq_norm = functional.covariance_factor(cov, 8)
    torch.testing.assert_close(factor @ factor.T, cov)
    torch.testing.assert_close(sq_norm, cov.square().sum())
    zc = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    dense = (zc.T @ zc / 5 - cov).square().sum()
    got = functional.low_rank_covariance_gap(zc, factor, sq_norm, 1 / 5)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("float32_failures", "vectors_dtype"), [(1, torch.float32), (9, torch.float64)]
)
def test_large_eigenproblems_recover_where_lapack_fails(
    monkeypatch, float32_failures, vectors_dtype
):
    """LAPACK can fail to converge on a low-rank d × d covariance (d > 512; seen in float32 on
    the default recipe's running covariance, and in float64 a few steps later). The solver
    then takes a + δI (δ taken back off the eigenvalues), and last float64. The failure cannot
    be produced on demand everywhere, so it is forced here: once (the shifted float32 attempt
    succeeds) or for every float32 attempt (float64 answers)."""
    z = torch.randn(16, 600)
    sigma = z.T @ z / 15
    expected_values = torch.linalg.eigvalsh(sigma.double())
    expected_vectors = torch.linalg.eigh(sigma.double())[1]
    eigh, eigvalsh = torch.linalg.eigh, torch.linalg.eigvalsh

    def failing(solver):
        left = [float32_failures]

        def solve(a, *args, **kwargs):
            if a.dtype == torch.float32 and left[0] > 0:
                left[0] -= 1
                raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
            return solver(a, *args, **kwargs)

        return solve

    monkeypatch.setattr(torch.linalg, "eigvalsh", failing(eigvalsh))
    values = functional.symmetric_eigvals(sigma)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values.double(), expected_values, rtol=0, atol=1e-4)
    monkeypatch.setattr(torch.linalg, "eigh", failing(eigh))
    vectors = functional.symmetric_eigvecs(sigma)
    assert vectors.dtype == vectors_dtype
    # eigenvectors of the larger (well separated) eigenvalues are unique up to sign
    top = slice(-15, None)
    assert torch.allclose(vectors[:, top].double().abs(), expected_vectors[:, top].abs(), atol=1e-4)


@pytest.mark.parametrize(("n", "d"), [(3, 9), (8, 8), (12, 5), (2, 6)])
def test_gram_eigenvalues_equal_dense(n, d):
    rng = np.random.default_rng(n + d)
    ref_eig = torch.tensor(np.sort(rng.uniform(0, 2, size=d))[::-1].copy())
    z0 = rng.normal(size=(n, d))
    out = {}
    for fast in (True, False):
        z = torch.tensor(z0, requires_grad=True)
        eig = batch_covariance_eigvals(z - z.mean(0), fast=fast)
        assert eig.shape == ((min(n, d),) if fast else (d,))
        loss = spectral_distance(eig, ref_eig)
        out[fast] = (loss.item(), torch.autograd.grad(loss, z)[0])
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-10)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("k", "d"), [(4, 10), (7, 7), (9, 5), (2, 3)])
def test_procrustes_nuclear_norm_equals_dense(k, d):
    rng = np.random.default_rng(k * d)
    r = torch.tensor(rng.normal(size=(k, d)))
    r = r - r.mean(0)  # rank-deficient, as in the loss
    z0 = rng.normal(size=(k, d))
    out = []
    for fast in (True, False):
        z = torch.tensor(z0, requires_grad=True)
        value = nuclear_norm_of_product(r, z - z.mean(0), fast=fast)
        out.append((value.item(), torch.autograd.grad(value, z)[0]))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-10)
    np.testing.assert_allclose(
        out[0][0], np.linalg.svd(r.numpy().T @ (z0 - z0.mean(0)), compute_uv=False).sum()
    )
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-6, atol=1e-8)
