"""RIFT's paired matching (rift/paired.py) against the NumPy formula (SciPy's orthogonal
Procrustes for the optimal Q), a learned Q reaching that optimum, and its invariances.

Shared NumPy references and helpers are fixtures in conftest.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from riftune.regularizers.rift import RIFT

SHAPES = [(5, 12), (40, 6), (7, 7), (2, 3)]  # n < d, n > d, n = d, the smallest batch
QS = ["identity", "learned", "optimal"]


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("w", [0.0, 0.6])
def test_paired_matches_numpy(n, d, q, w, np_paired_loss, make_data, build, rotation_np):
    _, z, reference = make_data(n, d, seed=n * 17 + d)
    reg = build(d, reference, q, match="paired", mean_weight=w)
    rot = rotation_np(reg) if q == "learned" else None
    expected = np_paired_loss(z, reference, q, w, rot)
    got = reg(torch.tensor(z), torch.tensor(reference))
    # float64 throughout; LAPACK's SVD rounds differently per CPU (3.6e-9 seen on a 2 x 3 case)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("q", ["identity", "optimal"])
def test_paired_needs_no_fit_and_takes_a_reference_of_any_spread(q, np_paired_loss, make_data):
    """Unfitted, the paired loss is already the formula's; a zero-variance fit, which
    normalize=True refuses for covariance matching, is accepted (nothing is divided by it)."""
    _, z, reference = make_data(6, 5)
    zt, rt = torch.tensor(z), torch.tensor(reference)
    unfitted = RIFT(5, match="paired", q=q).double()
    expected = np_paired_loss(z, reference, q, 0.0)
    np.testing.assert_allclose(unfitted(zt, rt).item(), expected, rtol=1e-9)
    constant = torch.ones(8, 5, dtype=torch.float64)
    fitted = RIFT(5, match="paired", q=q, normalize=True).double().fit_reference(constant)
    np.testing.assert_allclose(fitted(zt, rt).item(), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="zero variance"):
        RIFT(5, q=q, normalize=True).double().fit_reference(constant)


def test_learned_q_stays_orthogonal_and_reaches_procrustes_optimum(make_data, optimize_rotation):
    """3000 Adam steps on Q alone (float32): Q orthogonal to 1e-4, loss at the optimum.

    n < d, so the Procrustes optimum over O(d) is reachable by a rotation.
    """
    _, z, reference = make_data(5, 8, seed=21)
    z, reference = torch.tensor(z).float(), torch.tensor(reference).float()
    reg = RIFT(8, match="paired", q="learned", mean_weight=0.5)
    optimal = RIFT(8, match="paired", q="optimal", mean_weight=0.5)(z, reference).item()
    final = optimize_rotation(reg, z, reference, steps=3000, lr=0.05)
    assert final == pytest.approx(optimal, rel=1e-4, abs=1e-6)
    q = reg.rotation.detach()
    assert q.dtype == torch.float32
    assert (q.T @ q - torch.eye(8)).abs().max().item() <= 1e-4
    assert (q - torch.eye(8)).abs().max() > 0.3  # it really rotated


def test_rank_k_learned_q_reaches_the_procrustes_optimum_of_a_low_rank_rotation(
    call, optimize_rotation
):
    """Paired data rotated in a 2-D plane: a rank-2 learned Q finds the optimum (float32)."""
    d, n = 8, 6
    gen = torch.Generator().manual_seed(4)
    reference = torch.randn(n, d, generator=gen)
    plane = torch.eye(d)
    c, s = math.cos(0.7), math.sin(0.7)
    plane[:2, :2] = torch.tensor([[c, -s], [s, c]])
    z = reference @ plane
    reg = RIFT(d, match="paired", q="learned", q_rank=2)
    with torch.no_grad():  # pairs started off the plane, so the optimizer has to find it
        reg.q.rotation.start_at(torch.ones(d, 1))
    assert call(reg, z, reference).item() > 0.1
    final = optimize_rotation(reg, z, reference, steps=1500, lr=0.05)
    assert final == pytest.approx(0.0, abs=1e-5)
    q = reg.rotation.detach()
    assert (q.T @ q - torch.eye(d)).abs().max().item() <= 1e-5


def test_paired_is_invariant_to_scale_and_translation_of_each_side(make_data, build):
    _, z, reference = make_data(6, 4, seed=9)
    for q in QS:
        reg = build(4, reference, q, match="paired")
        base = reg(torch.tensor(z), torch.tensor(reference)).item()
        moved = reg(torch.tensor(3.7 * z + 5.0), torch.tensor(0.2 * reference - 1.0)).item()
        np.testing.assert_allclose(base, moved, rtol=1e-9)
