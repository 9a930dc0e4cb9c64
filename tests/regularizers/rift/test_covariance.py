"""RIFT's covariance matching (rift/covariance.py) against the NumPy formula, for every Q, with
batch and running statistics, the low-rank reference and its invariances.

Shared NumPy references and helpers are fixtures in conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riftune.regularizers.rift import RIFT
from riftune.regularizers.rift import covariance as covariance_module

SHAPES = [(5, 12), (40, 6), (7, 7), (2, 3)]  # n < d, n > d, n = d, the smallest batch
QS = ["identity", "learned", "optimal"]


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize(("normalize", "w"), [(True, 0.0), (False, 0.7), (True, 1.3)])
def test_covariance_batch_matches_numpy(
    n, d, q, normalize, w, np_cov, np_covariance_loss, make_data, build, rotation_np
):
    features, z, _ = make_data(n, d, seed=n * 31 + d)
    reg = build(d, features, q, normalize=normalize, mean_weight=w)
    rot = rotation_np(reg) if q == "learned" else None
    expected = np_covariance_loss(np_cov(z), z.mean(0), features, q, normalize, w, rot)
    got = reg(torch.tensor(z))
    assert got.dtype == torch.float64 and got.shape == ()
    np.testing.assert_allclose(got.item(), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("q", ["identity", "learned"])
@pytest.mark.parametrize(("normalize", "w"), [(True, 0.0), (False, 0.7)])
def test_covariance_batch_against_a_low_rank_reference_matches_numpy(
    monkeypatch, q, normalize, w, np_cov, np_covariance_loss, make_data, build, rotation_np
):
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


def test_a_loaded_reference_replaces_the_low_rank_factor_of_the_fitted_one(make_data, build):
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


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize(("n", "d"), [(4, 6), (20, 5)])
def test_covariance_ema_matches_numpy(
    q, n, d, np_cov, np_covariance_loss, make_data, build, rotation_np
):
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


def test_ema_optimal_recomputes_the_eigenbasis_every_k_calls(np_cov, make_data, build):
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


def test_ema_gradient_flows_through_the_current_batch_only(make_data, build):
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


def test_learned_q_reaches_covariance_optimum(make_data, optimize_rotation):
    features, z, _ = make_data(10, 5, seed=22)
    reg = RIFT(5, q="learned").fit_reference(torch.tensor(features).float())
    optimal = RIFT(5, q="optimal").fit_reference(torch.tensor(features).float())
    z = torch.tensor(z).float()
    final = optimize_rotation(reg, z, None, steps=800, lr=0.05)
    assert final == pytest.approx(optimal(z).item(), rel=1e-4, abs=1e-6)
    assert final < RIFT(5).fit_reference(torch.tensor(features).float())(z).item()


def test_normalized_covariance_is_invariant_to_rescaling_everything(make_data, build):
    features, z, _ = make_data(6, 5, seed=10)
    for q in QS:
        base = build(5, features, q, mean_weight=0.8)(torch.tensor(z)).item()
        scaled = build(5, 40.0 * features, q, mean_weight=0.8)(torch.tensor(40.0 * z)).item()
        np.testing.assert_allclose(base, scaled, rtol=1e-9)
