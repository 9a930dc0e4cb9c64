"""RIFT: every formula against an independent NumPy/SciPy computation, plus its guarantees.

The NumPy references below are written from the formulas in RIFT's docstring, with
np.cov, np.linalg.eigvalsh and scipy's orthogonal Procrustes solver, not from the module's
code paths (no Gram-matrix tricks, no QR, no Cayley solver).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from scipy.stats import special_ortho_group

from riftune.errors import UserError
from riftune.regularizers.base import PretrainedView, StepInputs, get
from riftune.regularizers.rift import (
    DEFAULT_Q_RANK,
    RIFT,
    HouseholderRotation,
    batch_covariance_eigvals,
    flags,
    functional,
    householder,
    nuclear_norm_of_product,
    spectral_distance,
)
from riftune.regularizers.rift import covariance as covariance_module

SHAPES = [(5, 12), (40, 6), (7, 7), (2, 3)]  # n < d, n > d, n = d, the smallest batch
QS = ["identity", "learned", "optimal"]
VARIANTS = [("covariance", q, s) for q in QS for s in ("batch", "ema")] + [
    ("paired", q, "batch") for q in QS
]


# ----------------------------------------------------------------------- NumPy references


def np_cov(x):
    return np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def np_householder(reflectors):
    """Q = −H(u_1)⋯H(u_d), H(u) = I − 2uuᵀ/uᵀu, multiplied out one reflection at a time."""
    d = len(reflectors)
    q = -np.eye(d)
    for u in reflectors.T:
        q = q @ (np.eye(d) - 2 * np.outer(u, u) / (u @ u))
    return q


def np_covariance_loss(sigma, mean, features, q, normalize, w, rot=None):
    """The covariance-matching loss from a statistic Σ̄, μ̄ (docstring formula)."""
    mu0, sigma0 = features.mean(0), np_cov(features)
    if q == "optimal":
        lam = np.sort(np.linalg.eigvalsh(sigma))[::-1]
        lam0 = np.sort(np.linalg.eigvalsh(sigma0))[::-1]
        cov_term = np.sum((lam - np.maximum(lam0, 0)) ** 2)
        mean_term = (np.linalg.norm(mean) - np.linalg.norm(mu0)) ** 2
    else:
        rot = np.eye(len(mu0)) if q == "identity" else rot
        cov_term = np.sum((sigma - rot.T @ sigma0 @ rot) ** 2)
        mean_term = np.sum((mean - rot.T @ mu0) ** 2)
    if normalize:
        cov_term /= np.sum(sigma0**2)
        mean_term /= np.trace(sigma0)
    return cov_term + w * mean_term


def np_paired_loss(z, r, q, w, rot=None):
    n = len(z)
    zc, rc = z - z.mean(0), r - r.mean(0)
    zs, rs = np.linalg.norm(zc), np.linalg.norm(rc)
    zh, rh = zc / zs, rc / rs
    if w:
        zh = np.vstack([zh, np.sqrt(w * n) * z.mean(0) / zs])
        rh = np.vstack([rh, np.sqrt(w * n) * r.mean(0) / rs])
    if q == "optimal":
        rot, _ = orthogonal_procrustes(rh, zh)
    elif q == "identity":
        rot = np.eye(z.shape[1])
    return np.sum((zh - rh @ rot) ** 2)


# ------------------------------------------------------------------------------ helpers


def make_data(n, d, seed=0, n_ref=64):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    features = rng.normal(size=(n_ref, d)) @ mix * 2 + rng.normal(size=d)
    z = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
    reference = z @ mix.T + 0.3 * rng.normal(size=(n, d))
    return features, z, reference


def build(d, features, q, match="covariance", seed=0, dtype=torch.float64, **kwargs):
    """A fitted RIFT in ``dtype``; a learned Q starts at a random rotation."""
    reg = RIFT(d, match=match, q=q, **kwargs).to(dtype)
    reg.fit_reference(torch.tensor(features))
    if q == "learned":
        with torch.no_grad():
            gen = torch.randn(d, d, generator=torch.Generator().manual_seed(seed + 7))
            reg.q.rotation.reflectors.copy_(gen)
    return reg


def rotation_np(reg):
    return np_householder(reg.q.rotation.reflectors.detach().double().numpy())


def call(reg, z, reference=None):
    return reg(z, reference) if reg.match == "paired" else reg(z)


@contextlib.contextmanager
def one_thread():
    """Tiny matrices in long loops run fastest without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------- formulas vs NumPy


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize(("normalize", "w"), [(True, 0.0), (False, 0.7), (True, 1.3)])
def test_covariance_batch_matches_numpy(n, d, q, normalize, w):
    features, z, _ = make_data(n, d, seed=n * 31 + d)
    reg = build(d, features, q, normalize=normalize, mean_weight=w)
    rot = rotation_np(reg) if q == "learned" else None
    expected = np_covariance_loss(np_cov(z), z.mean(0), features, q, normalize, w, rot)
    got = reg(torch.tensor(z))
    assert got.dtype == torch.float64 and got.shape == ()
    np.testing.assert_allclose(got.item(), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("q", ["identity", "learned"])
@pytest.mark.parametrize(("normalize", "w"), [(True, 0.0), (False, 0.7)])
def test_covariance_batch_against_a_low_rank_reference_matches_numpy(monkeypatch, q, normalize, w):
    """Σ₀ of 16 rows has rank 15; with n = 5 rows and d = 40, n + 15 < d, so the loss comes
    from the n×n and n×15 products (``low_rank_covariance_gap``), not the d×d difference."""
    n, d = 5, 40
    features, z, _ = make_data(n, d, seed=11, n_ref=16)
    calls = []
    low_rank = covariance_module.low_rank_covariance_gap
    monkeypatch.setattr(
        covariance_module,
        "low_rank_covariance_gap",
        lambda *args: calls.append(1) or low_rank(*args),
    )
    reg = build(d, features, q, normalize=normalize, mean_weight=w)
    rot = rotation_np(reg) if q == "learned" else None
    expected = np_covariance_loss(np_cov(z), z.mean(0), features, q, normalize, w, rot)
    zt = torch.tensor(z, requires_grad=True)
    np.testing.assert_allclose(reg(zt).item(), expected, rtol=1e-9, atol=1e-11)
    assert calls
    assert torch.autograd.gradcheck(lambda x: reg(x), (zt,))
    calls.clear()
    wide = torch.tensor(make_data(30, d, seed=12)[1])  # 30 + 15 >= d: the d×d form
    expected = np_covariance_loss(np_cov(wide.numpy()), wide.numpy().mean(0), features, q,
                                  normalize, w, rot)  # fmt: skip
    np.testing.assert_allclose(reg(wide).item(), expected, rtol=1e-9, atol=1e-11)
    assert not calls


def test_a_loaded_reference_replaces_the_low_rank_factor_of_the_fitted_one():
    d = 40
    first, z, _ = make_data(5, d, seed=13, n_ref=16)
    second = make_data(5, d, seed=14, n_ref=12)[0]
    reg, other = build(d, first, "identity"), build(d, second, "identity")
    zt = torch.tensor(z)
    reg(zt)  # makes the factor of the first Σ₀
    reg.load_state_dict(other.state_dict())
    torch.testing.assert_close(reg(zt), other(zt), rtol=1e-12, atol=0)
    reg.fit_reference(torch.tensor(first))
    torch.testing.assert_close(reg(zt), build(d, first, "identity")(zt), rtol=1e-12, atol=0)


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


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize(("n", "d"), [(4, 6), (20, 5)])
def test_covariance_ema_matches_numpy(q, n, d):
    """Learned Q: the running estimates live in Q's frame, R ← (1 − m)R + m·QΣ(z)Qᵀ, and the
    loss compares them with Σ₀, μ₀ directly. Optimal Q with eigh_every=1: exact spectra."""
    features, _, _ = make_data(n, d, seed=3)
    m, w = 0.3, 0.5
    reg = build(d, features, q, stats="ema", momentum=m, mean_weight=w, normalize=False,
                eigh_every=1)  # fmt: skip
    rot = rotation_np(reg) if q == "learned" else np.eye(d)
    form = "identity" if q == "learned" else q
    running, running_mean = np_cov(features), features.mean(0)
    rng = np.random.default_rng(4)
    for _ in range(3):
        z = rng.normal(size=(n, d)) * 1.5 @ rot.T  # rows z_i → Q z_i
        sigma = (1 - m) * running + m * np_cov(z)
        mean = (1 - m) * running_mean + m * z.mean(0)
        expected = np_covariance_loss(sigma, mean, features, form, False, w)
        np.testing.assert_allclose(reg(torch.tensor(z @ rot)).item(), expected, rtol=1e-9)
        running, running_mean = sigma, mean
        np.testing.assert_allclose(reg.running_cov.numpy(), running, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(reg.running_mean.numpy(), running_mean, rtol=1e-10)
    reg.eval()  # evaluation uses the running estimate but leaves it unchanged
    z = rng.normal(size=(n, d)) @ rot.T
    sigma = (1 - m) * running + m * np_cov(z)
    mean = (1 - m) * running_mean + m * z.mean(0)
    expected = np_covariance_loss(sigma, mean, features, form, False, w)
    np.testing.assert_allclose(reg(torch.tensor(z @ rot)).item(), expected, rtol=1e-9)
    np.testing.assert_allclose(reg.running_cov.numpy(), running, rtol=1e-10, atol=1e-12)


def test_ema_optimal_recomputes_the_eigenbasis_every_k_calls():
    """Exact spectral distance (value and gradient) on calls 0, k, 2k, ...; in between
    ‖Σ̄ − V Λ₀ Vᵀ‖² with the last V, an upper bound; resuming from a state_dict continues alike."""
    n, d, m, k = 6, 5, 0.3, 3
    features, _, _ = make_data(n, d, seed=8)
    reg = build(d, features, "optimal", stats="ema", momentum=m, normalize=False, eigh_every=k)
    lam0 = np.maximum(np.sort(np.linalg.eigvalsh(np_cov(features)))[::-1], 0)
    running, basis = np_cov(features), None
    rng = np.random.default_rng(9)
    batches = [rng.normal(size=(n, d)) * 1.5 for _ in range(7)]
    values = []
    for call_index, z in enumerate(batches):
        if call_index == 4:
            resumed = RIFT(d, q="optimal", stats="ema", momentum=m, normalize=False,
                           eigh_every=k).double()  # fmt: skip
            resumed.load_state_dict(reg.state_dict())
            reg = resumed
        sigma = (1 - m) * running + m * np_cov(z)
        lam, vectors = np.linalg.eigh(sigma)
        exact = np.sum((lam[::-1] - lam0) ** 2)
        if call_index % k == 0:
            basis = vectors
        target = basis @ np.diag(lam0[::-1]) @ basis.T
        expected = np.sum((sigma - target) ** 2)
        zt = torch.tensor(z, requires_grad=True)
        got = reg(zt)
        got.backward()
        np.testing.assert_allclose(got.item(), expected, rtol=1e-9)
        assert got.item() >= exact - 1e-12
        if call_index % k == 0:
            np.testing.assert_allclose(got.item(), exact, rtol=1e-9)
            # the gradient of the exact spectral distance, through m·Σ(z)
            zz = torch.tensor(z, requires_grad=True)
            zc = zz - zz.mean(0)
            s = (1 - m) * torch.tensor(running) + m * zc.T @ zc / (n - 1)
            ((torch.linalg.eigvalsh(s).flip(0) - torch.tensor(lam0)) ** 2).sum().backward()
            torch.testing.assert_close(zt.grad, zz.grad)
        values.append(got.item())
        running = sigma


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


def test_ema_gradient_flows_through_the_current_batch_only():
    features, z, _ = make_data(6, 4)
    reg = build(4, features, "identity", stats="ema", momentum=0.25)
    zt = torch.tensor(z, requires_grad=True)
    reg(zt).backward()
    assert not reg.running_cov.requires_grad
    # ∂L/∂z equals that of ‖m·Σ(z) + const‖², i.e. m times the batch-term derivative
    reg2 = build(4, features, "identity", stats="ema", momentum=0.25)
    zt2 = torch.tensor(z, requires_grad=True)
    sigma0 = reg2.ref_cov
    zc = zt2 - zt2.mean(0)
    sigma = 0.75 * sigma0 + 0.25 * zc.T @ zc / 5
    ((sigma - sigma0).square().sum() / sigma0.square().sum()).backward()
    torch.testing.assert_close(zt.grad, zt2.grad)


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("w", [0.0, 0.6])
def test_paired_matches_numpy(n, d, q, w):
    _, z, reference = make_data(n, d, seed=n * 17 + d)
    reg = build(d, reference, q, match="paired", mean_weight=w)
    rot = rotation_np(reg) if q == "learned" else None
    expected = np_paired_loss(z, reference, q, w, rot)
    got = reg(torch.tensor(z), torch.tensor(reference))
    # float64 throughout; LAPACK's SVD rounds differently per CPU (3.6e-9 seen on a 2 x 3 case)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("q", ["identity", "optimal"])
def test_paired_needs_no_fit_and_takes_a_reference_of_any_spread(q):
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


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
def test_gradients_match_finite_differences(match, q, stats):
    features, z, reference = make_data(5, 4, seed=11)
    reg = build(4, features, q, match=match, stats=stats, mean_weight=0.4)
    reg.eval()  # keep the running estimate fixed across gradcheck's evaluations
    zt = torch.tensor(z, requires_grad=True)
    inputs = (zt, reg.q.rotation.reflectors) if q == "learned" else (zt,)
    rt = torch.tensor(reference)

    def loss(zz, *_):
        return call(reg, zz, rt)

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------- fast paths vs dense


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


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_householder_rotation_matches_numpy_for_any_block_size(monkeypatch, block):
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

    def dense(u):  # −H(u_1)⋯H(u_d) in torch, one reflection at a time
        q = -torch.eye(d, dtype=u.dtype)
        for i in range(d):
            col = u[:, i : i + 1]
            q = q @ (torch.eye(d, dtype=u.dtype) - 2 * col @ col.T / (col.T @ col))
        return q

    u_ref, x_ref = reflectors.clone().requires_grad_(), x0.clone().requires_grad_()
    q = dense(u_ref)
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


def test_rotation_property():
    reg = RIFT(5, q="learned")
    assert torch.equal(reg.rotation, torch.eye(5))  # starts at the identity
    assert torch.equal(RIFT(3).rotation, torch.eye(3))
    with pytest.raises(ValueError, match="stores no rotation"):
        _ = RIFT(3, q="optimal").rotation


# ----------------------------------------------------------------------------- learned Q


def _optimize_rotation(reg, z, reference, steps, lr):
    opt = torch.optim.Adam(reg.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with one_thread():
        for _ in range(steps):
            loss = call(reg, z, reference)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        with torch.no_grad():
            return call(reg, z, reference).item()


def test_learned_q_stays_orthogonal_and_reaches_procrustes_optimum():
    """3000 Adam steps on Q alone (float32): Q orthogonal to 1e-4, loss at the optimum.

    n < d, so the Procrustes optimum over O(d) is reachable by a rotation.
    """
    _, z, reference = make_data(5, 8, seed=21)
    z, reference = torch.tensor(z).float(), torch.tensor(reference).float()
    reg = RIFT(8, match="paired", q="learned", mean_weight=0.5)
    optimal = RIFT(8, match="paired", q="optimal", mean_weight=0.5)(z, reference).item()
    final = _optimize_rotation(reg, z, reference, steps=3000, lr=0.05)
    assert final == pytest.approx(optimal, rel=1e-4, abs=1e-6)
    q = reg.rotation.detach()
    assert q.dtype == torch.float32
    assert (q.T @ q - torch.eye(8)).abs().max().item() <= 1e-4
    assert (q - torch.eye(8)).abs().max() > 0.3  # it really rotated


def test_learned_q_reaches_covariance_optimum():
    features, z, _ = make_data(10, 5, seed=22)
    reg = RIFT(5, q="learned").fit_reference(torch.tensor(features).float())
    optimal = RIFT(5, q="optimal").fit_reference(torch.tensor(features).float())
    z = torch.tensor(z).float()
    final = _optimize_rotation(reg, z, None, steps=800, lr=0.05)
    assert final == pytest.approx(optimal(z).item(), rel=1e-4, abs=1e-6)
    assert final < RIFT(5).fit_reference(torch.tensor(features).float())(z).item()


# ---------------------------------------------------------------------------- invariances


def test_optimal_losses_ignore_a_rotated_reference():
    features, z, reference = make_data(6, 7, seed=8)
    rot = special_ortho_group.rvs(7, random_state=3)
    zt = torch.tensor(z)
    cov = build(7, features, "optimal", mean_weight=0.5)(zt)
    cov_rot = build(7, features @ rot, "optimal", mean_weight=0.5)(zt)
    np.testing.assert_allclose(cov.item(), cov_rot.item(), rtol=1e-9)
    paired = RIFT(7, match="paired", q="optimal", mean_weight=0.5).double()
    np.testing.assert_allclose(
        paired(zt, torch.tensor(reference)).item(),
        paired(zt, torch.tensor(reference @ rot)).item(),
        rtol=1e-8,  # singular values from a Gram matrix's eigenvalues: ~1e-9 apart here
    )
    # the identity variants do see the rotation
    ident = build(7, features, "identity")(zt)
    assert abs(build(7, features @ rot, "identity")(zt).item() - ident.item()) > 1e-3


def test_paired_is_invariant_to_scale_and_translation_of_each_side():
    _, z, reference = make_data(6, 4, seed=9)
    for q in QS:
        reg = build(4, reference, q, match="paired")
        base = reg(torch.tensor(z), torch.tensor(reference)).item()
        moved = reg(torch.tensor(3.7 * z + 5.0), torch.tensor(0.2 * reference - 1.0)).item()
        np.testing.assert_allclose(base, moved, rtol=1e-9)


def test_normalized_covariance_is_invariant_to_rescaling_everything():
    features, z, _ = make_data(6, 5, seed=10)
    for q in QS:
        base = build(5, features, q, mean_weight=0.8)(torch.tensor(z)).item()
        scaled = build(5, 40.0 * features, q, mean_weight=0.8)(torch.tensor(40.0 * z)).item()
        np.testing.assert_allclose(base, scaled, rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 9),
    d=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    w=st.sampled_from([0.0, 0.5]),
)
def test_properties_random_batches(n, d, seed, w):
    """Optimal ≤ learned (any Q) and ≤ identity; covariance ignores translation."""
    features, z, reference = make_data(n, d, seed=seed % 10_000, n_ref=d + 3)
    zt, rt = torch.tensor(z), torch.tensor(reference)
    shift = torch.tensor(np.random.default_rng(seed).normal(size=d) * 10)
    for match in ("covariance", "paired"):
        losses = {
            q: call(build(d, features, q, match=match, seed=seed, mean_weight=w), zt, rt).item()
            for q in QS
        }
        tol = 1e-9 * (1 + losses["identity"])
        assert losses["optimal"] <= losses["learned"] + tol
        assert losses["optimal"] <= losses["identity"] + tol
        if match == "paired" and w == 0:
            assert losses["identity"] <= 4 + 1e-9  # two unit-norm matrices
    no_mean = build(d, features, "identity")
    np.testing.assert_allclose(no_mean(zt).item(), no_mean(zt + shift).item(), rtol=1e-7)


# --------------------------------------------------------------------- numerical safety


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
@pytest.mark.parametrize("case", ["n2", "rank_deficient", "constant_features", "constant_batch"])
def test_finite_values_and_gradients(match, q, stats, case):
    torch.manual_seed(0)
    d = 6
    z = {
        "n2": torch.randn(2, d),
        "rank_deficient": torch.randn(5, 2) @ torch.randn(2, d),
        "constant_features": torch.cat([torch.randn(4, 3), torch.ones(4, 3)], 1),
        "constant_batch": torch.ones(4, d),
    }[case]
    features = torch.cat([torch.randn(10, 3), torch.full((10, 3), 2.0)], 1)
    reg = RIFT(d, match=match, q=q, stats=stats, mean_weight=0.5).fit_reference(features)
    z = z.clone().requires_grad_(True)
    loss = call(reg, z, z.detach() * 2 + 1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    if q == "learned":
        assert torch.isfinite(reg.q.rotation.reflectors.grad).all()


@pytest.mark.parametrize(("match", "q"), [(m, q) for m in ("covariance", "paired") for q in QS])
def test_bf16_autocast_input_gives_float32_accurate_loss(match, q):
    features, z, reference = make_data(16, 24, seed=12)
    reg = build(24, features, q, match=match, dtype=torch.float32)
    exact = build(24, features, q, match=match, dtype=torch.float64)
    if q == "learned":
        with torch.no_grad():
            exact.q.rotation.reflectors.copy_(reg.q.rotation.reflectors.double())
        if match == "covariance":
            exact.ref_cov.copy_(reg.ref_cov.double())  # same float32-rounded Σ₀
    z16 = torch.tensor(z).bfloat16()
    r16 = torch.tensor(reference).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = call(reg, z16, r16)
    expected = call(exact, z16.double(), r16.double())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), expected.item(), rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ fitting and the state


def test_streaming_fit_equals_one_shot_and_numpy():
    features, _, _ = make_data(4, 6, n_ref=90)
    one = RIFT(6, q="optimal", stats="ema").double().fit_reference(torch.tensor(features))
    chunks = (torch.tensor(c) for c in np.array_split(features, 7))
    streamed = RIFT(6, q="optimal", stats="ema").double().fit_reference(chunks)
    for name, buf in one.named_buffers():
        torch.testing.assert_close(buf, dict(streamed.named_buffers())[name], rtol=1e-12, atol=0)
    sigma0 = np_cov(features)
    np.testing.assert_allclose(one.ref_cov.numpy(), sigma0, rtol=1e-12)
    np.testing.assert_allclose(one.ref_mean.numpy(), features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(one.ref_cov_sq_norm.item(), np.sum(sigma0**2), rtol=1e-12)
    np.testing.assert_allclose(one.ref_trace.item(), np.trace(sigma0), rtol=1e-12)
    np.testing.assert_allclose(
        one.q.ref_eigvals.numpy(), np.sort(np.linalg.eigvalsh(sigma0))[::-1], atol=1e-12
    )
    assert one.ref_count.item() == 90
    np.testing.assert_allclose(one.running_cov.numpy(), sigma0, rtol=1e-12)


@pytest.mark.parametrize(("match", "q", "stats"), VARIANTS)
def test_state_dict_round_trip(match, q, stats):
    features, z, reference = make_data(6, 5)
    reg = build(5, features, q, match=match, stats=stats, dtype=torch.float32)
    zt, rt = torch.tensor(z).float(), torch.tensor(reference).float()
    call(reg, zt, rt)  # moves the running estimate away from Σ₀
    state = reg.state_dict()
    expected_keys = {"ref_count", "ref_mean", "ref_cov_sq_norm", "ref_trace"}
    expected_keys |= {"ref_cov"} if match == "covariance" else set()  # paired never reads Σ₀
    expected_keys |= {"running_cov", "running_mean"} if stats == "ema" else set()
    expected_keys |= {"q.rotation.reflectors"} if q == "learned" else set()
    expected_keys |= {"q.ref_eigvals"} if (match, q) == ("covariance", "optimal") else set()
    if (match, q, stats) == ("covariance", "optimal", "ema"):
        expected_keys |= {"q.spectral_target", "q.spectral_age"}
    assert set(state) == expected_keys
    fresh = RIFT(5, match=match, q=q, stats=stats)
    fresh.load_state_dict(state)
    reg.eval()
    fresh.eval()
    assert call(fresh, zt, rt).item() == call(reg, zt, rt).item()


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    reg = RIFT(4)
    with pytest.raises(ValueError, match="fit_reference"):
        reg(torch.randn(3, 4))
    reg.fit_reference(torch.randn(10, 4))
    with pytest.raises(ValueError, match="2-D"):
        reg(torch.randn(3, 4, 1))
    with pytest.raises(ValueError, match="dim=4"):
        reg(torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 2 rows"):
        reg(torch.randn(1, 4))
    with pytest.raises(ValueError, match="floating-point"):
        reg(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no per-sample reference"):
        reg(torch.randn(3, 4), torch.randn(3, 4))
    bad = torch.randn(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        RIFT(4).fit_reference(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        RIFT(4).fit_reference([torch.randn(5, 4), torch.full((2, 4), float("inf"))])
    with pytest.raises(ValueError, match="at least 2 reference rows"):
        RIFT(4).fit_reference(torch.randn(1, 4))
    with pytest.raises(ValueError, match="dim=4"):
        RIFT(4).fit_reference(torch.randn(5, 3))
    with pytest.raises(ValueError, match="zero variance"):
        RIFT(4).fit_reference(torch.ones(5, 4))
    paired = RIFT(4, match="paired")
    with pytest.raises(ValueError, match="forward\\(z, reference\\)"):
        paired(torch.randn(3, 4))
    with pytest.raises(ValueError, match="same samples"):
        paired(torch.randn(3, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="dim=4"):
        paired(torch.randn(3, 4), torch.randn(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"match": "cov"}, "match must be one of"),
        ({"q": "spectral"}, "q must be one of"),
        ({"stats": "running"}, "stats must be one of"),
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"mean_weight": -1.0}, "mean_weight"),
        ({"mean_weight": float("nan")}, "mean_weight"),
        ({"match": "paired", "stats": "ema"}, "ema"),
        ({"reference_source": "teacher"}, "paired' only"),
        ({"match": "paired", "reference_source": "disk"}, "reference_source"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RIFT(4, **kwargs)
    with pytest.raises(ValueError, match="positive integer"):
        RIFT(0)


# --------------------------------------------------------------------- riftune protocol


def _rift(argv: str | list[str], dim: int = 7) -> RIFT:
    """RIFT as ``riftune finetune --reg rift ARGV`` builds it for embeddings of size ``dim``."""
    from riftune.config import finetune_parser, run_config_from_args

    argv = argv.split() if isinstance(argv, str) else argv
    config = run_config_from_args(finetune_parser().parse_args(["--reg", "rift", *argv]))
    return config.regularizer.build(dim)


def test_registered_with_protocol_attributes():
    assert get("rift") is RIFT
    assert RIFT(4).reference is None
    assert RIFT(4, match="paired").reference == "cache"
    assert RIFT(4, match="paired", reference_source="teacher").reference == "teacher"
    assert not RIFT.needs_feature_maps


def test_prepare_and_penalty():
    features, z, reference = make_data(6, 5)
    emb = torch.tensor(features).float()
    cov = RIFT(5, q="optimal")
    cov.prepare(PretrainedView(model=torch.nn.Identity(), train_embeddings=emb))
    direct = RIFT(5, q="optimal").fit_reference(emb)
    zt, rt = torch.tensor(z).float(), torch.tensor(reference).float()
    assert cov.penalty(StepInputs(embeddings=zt)).item() == direct(zt).item()
    paired = RIFT(5, match="paired", q="optimal")
    assert paired.penalty(StepInputs(embeddings=zt, reference=rt)).item() == paired(zt, rt).item()
    with pytest.raises(ValueError, match="reference embeddings"):
        paired.penalty(StepInputs(embeddings=zt))


def test_cli_flags_defaults_and_options():
    reg = _rift([])
    assert (reg.match, reg.q.name) == (flags.CLI_DEFAULT_MATCH, flags.CLI_DEFAULT_Q)
    assert (reg.stats, reg.momentum, reg.mean_weight, reg.normalize) == ("batch", 0.1, 0.0, True)
    assert reg.reference == "cache"  # paired matching reads the cache unless told otherwise
    assert _rift("--rift-match covariance").reference is None
    argv = "--rift-match covariance --rift-q learned --rift-stats ema --rift-momentum 0.2 "
    argv += "--rift-mean-weight 0.5 --no-rift-normalize"
    reg = _rift(argv)
    assert (reg.match, reg.q.name, reg.stats, reg.momentum) == ("covariance", "learned", "ema", 0.2)
    assert (reg.mean_weight, reg.normalize) == (0.5, False)
    assert reg.q.rotation.rank is None  # the default rank 64 is all of d = 7
    assert _rift(argv, dim=100).q.rotation.rank == 64
    assert _rift(argv + " --rift-q-rank 4").q.rotation.reflectors.shape == (7, 4)
    reg = _rift(argv + " --rift-q-rank all", dim=100)
    assert reg.q.rotation.reflectors.shape == (100, 100)
    assert reg.param_lr is None  # the engine gives learned Q the head's learning rate
    assert _rift(argv + " --rift-q-lr 2e-5").param_lr == 2e-5
    assert _rift("--rift-match paired --rift-reference teacher").reference == "teacher"
    for bad, message in (
        ("--rift-q optimal --rift-q-lr 1e-4", "--rift-q-lr applies to --rift-q learned only"),
        ("--rift-q learned --rift-q-lr 0", "--rift-q-lr 0.0: must be a finite number > 0"),
        ("--rift-q learned --rift-q-lr nan", "--rift-q-lr nan: must be a finite number > 0"),
        ("--rift-match paired --rift-stats ema", "--rift-stats ema applies to"),
        ("--rift-momentum 0", "--rift-momentum 0.0: must be in (0, 1]"),
        ("--rift-q learned --rift-q-rank 3", "--rift-q-rank 3: must be even"),
        ("--rift-q optimal --rift-q-rank 4", "--rift-q-rank applies to --rift-q learned only"),
        ("--rift-match covariance --rift-reference teacher", "applies to --rift-match paired"),
    ):
        with pytest.raises(UserError) as error:
            _rift(bad)
        assert str(error.value).startswith("--reg rift: "), str(error.value)
        assert message in str(error.value), str(error.value)
    from riftune.config import finetune_parser

    help_text = finetune_parser().format_help()
    for flag in ("--rift-q", "--rift-stats", "--rift-momentum", "--no-rift-normalize"):
        assert flag in help_text


@pytest.mark.parametrize("q", ["identity", "optimal"])
@pytest.mark.parametrize("rank", ["64", "32", "all"])
def test_an_explicit_q_rank_needs_learned_q_whatever_its_value(q, rank):
    with pytest.raises(UserError, match="--rift-q-rank applies to --rift-q learned only"):
        _rift(["--rift-q", q, "--rift-q-rank", rank])
    assert _rift(["--rift-q", q]).q.name == q  # unset, the rank goes with any Q
    learned = _rift(["--rift-q", "learned", "--rift-q-rank", rank], dim=100)
    assert learned.q.rotation.reflectors.shape == (100, 100 if rank == "all" else int(rank))


def test_the_q_rank_in_a_run_config_is_there_with_learned_q_only():
    """config.yaml holds the rank (its default resolved) only for learned Q; old flat files,
    which stored 64 for every run, still load."""
    from riftune.config import RunConfig

    learned = RunConfig.from_dict({"regularizer": {"name": "rift", "q": "learned"}})
    assert learned.to_dict()["regularizer"]["q_rank"] == DEFAULT_Q_RANK
    optimal = RunConfig.from_dict({"regularizer": {"name": "rift", "q": "optimal"}})
    assert "q_rank" not in optimal.to_dict()["regularizer"]
    old = RunConfig.from_dict({"reg": "rift", "rift_q": "optimal", "rift_q_rank": 64})
    assert old.to_dict() == optimal.to_dict()
    # the constructor's own default is unchanged: RIFT(q=...) with q_rank=64 is accepted
    assert RIFT(8, q="optimal", q_rank=DEFAULT_Q_RANK).q.name == "optimal"


def test_reg_rift_alone_keeps_the_default_similarity_budget():
    """README's defaults rule chose a similarity budget for --reg rift; --lam, an explicit
    budget or the covariance penalty (no similarity) keep a fixed weight or their own budget."""
    from riftune.config import RunConfig, finetune_parser, run_config_from_args

    def config(*argv: str) -> RunConfig:
        return run_config_from_args(finetune_parser().parse_args(list(argv)))

    default = config("--reg", "rift")
    assert default.budget.target_similarity == flags.CLI_DEFAULT_TARGET_SIMILARITY == 0.8
    assert default.epsilon == pytest.approx(2 - 2 * 0.8) and default.initial_lam == 0.0
    assert RunConfig.from_dict(default.to_dict()).to_dict() == default.to_dict()
    fixed = config("--reg", "rift", "--lam", "0.1")
    assert not fixed.budget.active and fixed.initial_lam == 0.1
    covariance = config("--reg", "rift", "--rift-match", "covariance")
    assert not covariance.budget.active and covariance.initial_lam == flags.CLI_DEFAULT_LAM
    own = config("--reg", "rift", "--budget", "0.3")
    assert (own.budget.budget, own.budget.target_similarity) == (0.3, None)
    assert not config("--reg", "cka").budget.active


def test_lam_defaults_to_the_regularizers_own():
    from riftune.config import finetune_parser, run_config_from_args

    for argv, expected in (
        (["--reg", "rift"], flags.CLI_DEFAULT_LAM),
        (["--reg", "rift", "--lam", "0.3"], 0.3),
        (["--reg", "l2sp"], 1.0),
        (["--reg", "none", "--lam", "3"], None),
    ):
        config = run_config_from_args(finetune_parser().parse_args(argv))
        assert config.regularizer.lam == expected


# ------------------------------------------------------------------ learned Q of limited rank


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

    def dense(u):
        q = torch.eye(d, dtype=u.dtype)
        for i in range(k):
            col = u[:, i : i + 1]
            q = q @ (torch.eye(d, dtype=u.dtype) - 2 * col @ col.T / (col.T @ col))
        return q

    u_ref, x_ref = reflectors.clone().requires_grad_(), x0.clone().requires_grad_()
    q = dense(u_ref)
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


def test_fit_reference_starts_a_rank_k_q_at_the_top_principal_directions():
    features, z, reference = make_data(40, 8, seed=3)
    reg = RIFT(8, match="paired", q="learned", q_rank=4).double()
    assert reg.q.rotation.reflectors.shape == (8, 4)
    reg.fit_reference(torch.tensor(features))
    _, vectors = np.linalg.eigh(np_cov(features))
    top = vectors[:, ::-1][:, :2]
    u = reg.q.rotation.reflectors.detach().numpy()
    np.testing.assert_allclose(np.abs(u[:, 0::2].T @ top), np.eye(2), atol=1e-8)
    np.testing.assert_allclose(u[:, 0::2], u[:, 1::2])
    torch.testing.assert_close(reg.rotation.detach(), torch.eye(8).double(), rtol=0, atol=1e-12)
    # at Q = I every variant's loss equals Q = identity's
    zt, rt = torch.tensor(z), torch.tensor(reference)
    identity = RIFT(8, match="paired", q="identity").double()
    assert call(reg, zt, rt).item() == pytest.approx(call(identity, zt, rt).item(), rel=1e-12)


def test_rank_k_learned_q_reaches_the_procrustes_optimum_of_a_low_rank_rotation():
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
    final = _optimize_rotation(reg, z, reference, steps=1500, lr=0.05)
    assert final == pytest.approx(0.0, abs=1e-5)
    q = reg.rotation.detach()
    assert (q.T @ q - torch.eye(d)).abs().max().item() <= 1e-5


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
