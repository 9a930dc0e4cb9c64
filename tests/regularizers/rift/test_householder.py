"""The learned rotation (rift/householder.py): blocked products against the reflection-by-
reflection product in NumPy, its start, its gradient and its rank.

Shared NumPy references and helpers are fixtures in conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.regularizers.rift import (
    RIFT,
    HouseholderRotation,
    householder,
)


def torch_reflections(u):
    """H(u_1)⋯H(u_k) for the columns of u (d, k), in torch, one reflection at a time."""
    d = u.shape[0]
    q = torch.eye(d, dtype=u.dtype)
    for i in range(u.shape[1]):
        col = u[:, i : i + 1]
        q = q @ (torch.eye(d, dtype=u.dtype) - 2 * col @ col.T / (col.T @ col))
    return q


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_householder_rotation_matches_numpy_for_any_block_size(monkeypatch, block, np_householder):
    monkeypatch.setattr(householder, "BLOCK_DEFAULT", block)
    rng = np.random.default_rng(5)
    reflectors = rng.normal(size=(7, 7))
    q = np_householder(reflectors)
    np.testing.assert_allclose(q.T @ q, np.eye(7), atol=1e-12)
    assert np.linalg.det(q) == pytest.approx(1.0)
    rot = HouseholderRotation(7).double()
    with torch.no_grad():
        rot.reflectors.copy_(torch.tensor(reflectors))
    x = torch.tensor(rng.normal(size=(4, 7)))
    np.testing.assert_allclose(rot.rotate_rows(x).detach().numpy(), x.numpy() @ q.T, atol=1e-12)
    np.testing.assert_allclose(
        rot.rotate_rows(x, transpose=True).detach().numpy(), x.numpy() @ q, atol=1e-12
    )
    np.testing.assert_allclose(rot.matrix().detach().numpy(), q, atol=1e-12)


@pytest.mark.parametrize("block", [1, 3, 7])
@pytest.mark.parametrize("transpose", [False, True])
def test_householder_gradient_matches_the_reflection_by_reflection_product(
    monkeypatch, block, transpose
):
    """The blocked WY form's gradients (reflectors and rows) equal those of the plain product."""
    monkeypatch.setattr(householder, "BLOCK_DEFAULT", block)
    d = 7
    gen = torch.Generator().manual_seed(3)
    reflectors = torch.eye(d, dtype=torch.float64) + torch.randn(d, d, generator=gen).double()
    x0 = torch.randn(4, d, generator=gen).double()
    weights = torch.randn(4, d, generator=gen).double()

    u_ref, x_ref = reflectors.clone().requires_grad_(), x0.clone().requires_grad_()
    q = -torch_reflections(u_ref)  # −H(u_1)⋯H(u_d)
    ((x_ref @ (q if transpose else q.T)) * weights).sum().backward()
    rot = HouseholderRotation(d).double()
    with torch.no_grad():
        rot.reflectors.copy_(reflectors)
    x = x0.clone().requires_grad_()
    (rot.rotate_rows(x, transpose=transpose) * weights).sum().backward()
    torch.testing.assert_close(rot.reflectors.grad, u_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


def test_householder_starts_at_identity_with_every_direction_reachable():
    """At U = I, Q = I and the Jacobian of Q reaches all d(d − 1)/2 rotation directions."""
    d = 5
    rot = HouseholderRotation(d).double()
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.equal(rot.matrix().detach(), eye)
    del rot.reflectors  # differentiate with respect to a plain tensor in its place

    def q_of(reflectors):
        rot.reflectors = reflectors
        return rot.matrix().flatten()

    jac = torch.autograd.functional.jacobian(q_of, eye.clone())
    assert torch.linalg.matrix_rank(jac.reshape(d * d, d * d)).item() == d * (d - 1) // 2


def np_householder_pairs(reflectors):
    """Q = H(u_1)⋯H(u_k) (no sign): a rotation of limited rank, one reflection at a time."""
    d = len(reflectors)
    q = np.eye(d)
    for u in reflectors.T:
        q = q @ (np.eye(d) - 2 * np.outer(u, u) / (u @ u))
    return q


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("transpose", [False, True])
def test_rank_k_rotation_matches_its_reflection_product(monkeypatch, block, transpose):
    """Values and gradients of the blocked rank-k rotation equal the plain product's."""
    monkeypatch.setattr(householder, "BLOCK_DEFAULT", block)
    d, k = 9, 4
    gen = torch.Generator().manual_seed(11)
    reflectors = torch.randn(d, k, generator=gen).double()
    x0 = torch.randn(5, d, generator=gen).double()
    weights = torch.randn(5, d, generator=gen).double()
    q_np = np_householder_pairs(reflectors.numpy())
    np.testing.assert_allclose(q_np.T @ q_np, np.eye(d), atol=1e-12)
    assert np.linalg.det(q_np) == pytest.approx(1.0)
    assert np.linalg.matrix_rank(q_np - np.eye(d), tol=1e-9) <= k

    u_ref, x_ref = reflectors.clone().requires_grad_(), x0.clone().requires_grad_()
    q = torch_reflections(u_ref)
    expected = x_ref @ (q if transpose else q.T)
    (expected * weights).sum().backward()
    rot = HouseholderRotation(d, rank=k).double()
    with torch.no_grad():
        rot.reflectors.copy_(reflectors)
    x = x0.clone().requires_grad_()
    out = rot.rotate_rows(x, transpose=transpose)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
    (out * weights).sum().backward()
    torch.testing.assert_close(rot.reflectors.grad, u_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rot.matrix().detach().numpy(), q_np, atol=1e-12)


def test_rank_k_rotation_starts_at_identity_and_moves_the_chosen_subspace():
    """Q = I at the start; the Jacobian reaches exactly the m(d − m) + m(m − 1)/2 rotation
    directions that move span(v_1 … v_m), m = k/2, wherever start_at put the pairs."""
    d, k = 6, 4
    m = k // 2
    rot = HouseholderRotation(d, rank=k).double()
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.equal(rot.matrix().detach(), eye)
    gen = torch.Generator().manual_seed(2)
    directions = torch.linalg.qr(torch.randn(d, m, generator=gen, dtype=torch.float64))[0]
    rot.start_at(3.0 * directions)
    torch.testing.assert_close(rot.matrix().detach(), eye, rtol=0, atol=1e-12)
    start = rot.reflectors.detach().clone()
    del rot.reflectors  # differentiate with respect to a plain tensor in its place

    def q_of(reflectors):
        rot.reflectors = reflectors
        return rot.matrix().flatten()

    jac = torch.autograd.functional.jacobian(q_of, start).reshape(d * d, d * k)
    assert torch.linalg.matrix_rank(jac).item() == m * (d - m) + m * (m - 1) // 2
    # every reachable direction A = dQ is skew and moves span(v): A restricted to span(v)ᗮ is 0
    outside = eye - directions @ directions.T
    for column in jac.T:
        a = column.reshape(d, d)
        torch.testing.assert_close(a, -a.T, rtol=0, atol=1e-10)
        torch.testing.assert_close(
            outside @ a @ outside, torch.zeros(d, d).double(), atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("rank", [0, -2, 3, 9, 2.0])
def test_bad_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="even integer >= 2"):
        RIFT(8, q="learned", q_rank=rank)


@pytest.mark.parametrize("rank", [8, 10])
def test_rank_of_at_least_d_is_the_full_rotation(rank):
    rot = RIFT(8, q="learned", q_rank=rank).q.rotation
    assert rot.rank is None and rot.reflectors.shape == (8, 8)


def test_rank_needs_learned_q_and_full_rank_has_no_start():
    with pytest.raises(ValueError, match="q_rank applies to q='learned' only"):
        RIFT(8, q="optimal", q_rank=4)
    with pytest.raises(ValueError, match="limited rank only"):
        HouseholderRotation(4).start_at(torch.ones(4, 2))
    with pytest.raises(ValueError, match="shape \\(4, 1\\)"):
        HouseholderRotation(4, rank=2).start_at(torch.ones(4, 2))
