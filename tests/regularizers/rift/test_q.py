"""RIFT's Q strategies (riftune/regularizers/rift/q/): each against NumPy, the registry, and a
new Q registered in one place working in both matchings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.stats import special_ortho_group

from riftune.regularizers.rift import Q_STRATEGIES, RIFT, QSettings, QStrategy, register_q
from riftune.regularizers.rift.q import q_strategy
from riftune.regularizers.rift.q.identity import IdentityQ
from riftune.regularizers.rift.q.learned import LearnedQ
from riftune.regularizers.rift.q.optimal import OptimalQ

D = 6


def settings(q_rank=None, covariance=True, running=False, eigh_every=1) -> QSettings:
    return QSettings(D, q_rank, eigh_every, covariance, running)


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, D))
    return z, rng.normal(size=(5, D)), rng.normal(size=(40, D)) * 2 + 1


def test_the_registry_maps_each_name_to_its_class_in_order():
    assert Q_STRATEGIES == {"identity": IdentityQ, "learned": LearnedQ, "optimal": OptimalQ}
    assert all(q_strategy(name).name == name for name in Q_STRATEGIES)
    with pytest.raises(ValueError, match="q must be one of identity, learned, optimal; got 'x'"):
        q_strategy("x")


@pytest.mark.parametrize(("cls", "refused"), [(IdentityQ, "q_rank"), (OptimalQ, "q_rank")])
def test_only_a_q_that_takes_a_rank_accepts_one(cls, refused):
    assert cls.refused_option({"q_rank": 4, "q_lr": None}) == refused
    assert LearnedQ.refused_option({"q_rank": 4, "q_lr": 1e-3}) is None
    with pytest.raises(ValueError, match="q_rank applies to q='learned' only"):
        cls(settings(q_rank=4))


def test_identity_q_against_numpy(batch):
    z, r, _ = batch
    q = IdentityQ(settings())
    zt, rt = torch.tensor(z), torch.tensor(r)
    frame = q.to_frame(zt, zt.mean(0), True)
    assert frame[0] is zt and torch.equal(frame[1], zt.mean(0))
    assert q.paired_distance(zt, rt).item() == pytest.approx(np.sum((z - r) ** 2), rel=1e-12)
    assert q.mean_gap(zt[0], rt[0]).item() == pytest.approx(np.sum((z[0] - r[0]) ** 2))
    np.testing.assert_array_equal(q.matrix(rt).numpy(), np.eye(D))
    assert dict(q.state_dict()) == {}


@pytest.mark.parametrize("with_mean", [False, True])
def test_learned_q_against_numpy(batch, with_mean, np_householder):
    z, r, _ = batch
    q = LearnedQ(settings()).double()
    with torch.no_grad():
        q.rotation.reflectors.copy_(torch.randn(D, D, generator=torch.Generator().manual_seed(1)))
    rot = np_householder(q.rotation.reflectors.detach().numpy())
    zt = torch.tensor(z)
    rows, mean = q.to_frame(zt, zt.mean(0), with_mean)
    np.testing.assert_allclose(rows.detach().numpy(), z @ rot.T, atol=1e-12)
    np.testing.assert_allclose(
        mean.detach().numpy(), rot @ z.mean(0) if with_mean else z.mean(0), atol=1e-12
    )
    expected = np.sum((z - r @ rot) ** 2)
    got = q.paired_distance(zt, torch.tensor(r)).item()
    assert got == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(q.matrix(zt).detach().numpy(), rot, atol=1e-12)
    assert set(q.state_dict()) == {"rotation.reflectors"}


def test_learned_q_of_rank_k_fits_its_pairs_to_the_top_principal_directions(batch, np_cov):
    _, _, features = batch
    q = LearnedQ(settings(q_rank=4)).double()
    q.fit(torch.tensor(np_cov(features)))
    _, vectors = np.linalg.eigh(np_cov(features))
    u = q.rotation.reflectors.detach().numpy()
    for i, v in enumerate(vectors[:, ::-1][:, :2].T):  # pairs u_{2i} = u_{2i+1} = ±v_i
        assert abs(abs(u[:, 2 * i] @ v) - 1) < 1e-10 and np.allclose(u[:, 2 * i], u[:, 2 * i + 1])
    np.testing.assert_allclose(q.matrix(torch.zeros(0)).detach().numpy(), np.eye(D), atol=1e-12)


def test_optimal_q_against_numpy(batch, np_cov):
    z, r, features = batch
    q = OptimalQ(settings()).double()
    q.fit(torch.tensor(np_cov(features)))
    lam0 = np.sort(np.linalg.eigvalsh(np_cov(features)))[::-1]
    np.testing.assert_allclose(q.ref_eigvals.numpy(), lam0, rtol=1e-12)
    zt = torch.tensor(z)
    zc = zt - zt.mean(0)
    lam = np.sort(np.linalg.eigvalsh(np_cov(z)))[::-1]
    gap = q.covariance_gap(zc, lambda rows: pytest.fail("optimal Q compares spectra"))
    assert gap.item() == pytest.approx(np.sum((lam - lam0) ** 2), rel=1e-10)
    assert q.mean_gap(zt[0], torch.tensor(r[0])).item() == pytest.approx(
        (np.linalg.norm(z[0]) - np.linalg.norm(r[0])) ** 2, rel=1e-12
    )
    rot, _ = orthogonal_procrustes(r, z)
    got = q.paired_distance(zt, torch.tensor(r)).item()
    assert got == pytest.approx(np.sum((z - r @ rot) ** 2), rel=1e-10)
    with pytest.raises(ValueError, match="stores no rotation"):
        q.matrix(zt)


def test_optimal_q_running_target_is_the_reference_spectrum_in_the_running_eigenbasis(
    batch, np_cov
):
    _, _, features = batch
    q = OptimalQ(settings(running=True, eigh_every=2)).double()
    q.fit(torch.tensor(np_cov(features)))
    sigma = np_cov(features[:20] ** 2)  # distinct eigenvalues: V is unique up to signs
    _, vectors = np.linalg.eigh(sigma)
    lam0 = np.sort(np.linalg.eigvalsh(np_cov(features)))  # ascending, like the eigenvectors
    target = q.running_target(torch.tensor(sigma), torch.zeros(D, D)).numpy()
    np.testing.assert_allclose(target, vectors @ np.diag(lam0) @ vectors.T, atol=1e-10)
    assert int(q.spectral_age) == 1
    kept = q.running_target(torch.tensor(sigma) * 5, torch.zeros(D, D)).numpy()  # no refresh
    np.testing.assert_array_equal(kept, target)
    assert set(q.state_dict()) == {"ref_eigvals", "spectral_target", "spectral_age"}
    assert set(OptimalQ(settings(covariance=False)).state_dict()) == set()


class FixedQ(QStrategy):
    """A test Q: one fixed random rotation, applied the way :class:`LearnedQ` applies its own."""

    name = "fixed-test"
    help = "'fixed-test'"

    def __init__(self, settings: QSettings):
        super().__init__(settings)
        rot = special_ortho_group.rvs(settings.dim, random_state=5)
        self.register_buffer("rotation", torch.tensor(rot))

    def matrix(self, like):
        return self.rotation

    def to_frame(self, zc, mean, with_mean):
        return zc @ self.rotation.T, mean @ self.rotation.T

    def align_reference(self, r_hat):
        return r_hat @ self.rotation


@pytest.fixture
def fixed_q():
    register_q(FixedQ)
    yield FixedQ.name
    del Q_STRATEGIES[FixedQ.name]


@pytest.mark.parametrize("stats", ["batch", "ema"])
def test_a_new_q_registered_once_works_in_covariance_matching(fixed_q, batch, stats, np_cov):
    z, _, features = batch
    w = 0.6
    reg = RIFT(D, q=fixed_q, mean_weight=w, stats=stats, momentum=0.25).double()
    reg.fit_reference(torch.tensor(features))
    rot = reg.rotation.numpy()
    sigma0, mu0 = np_cov(features), features.mean(0)
    sigma, mean = np_cov(z), z.mean(0)
    if stats == "ema":  # the running estimates start at Σ₀, μ₀ and live in Q's frame
        sigma = 0.75 * sigma0 + 0.25 * rot @ sigma @ rot.T
        mean = 0.75 * mu0 + 0.25 * rot @ mean
        expected = np.sum((sigma - sigma0) ** 2) / np.sum(sigma0**2)
        expected += w * np.sum((mean - mu0) ** 2) / np.trace(sigma0)
    else:
        expected = np.sum((sigma - rot.T @ sigma0 @ rot) ** 2) / np.sum(sigma0**2)
        expected += w * np.sum((mean - rot.T @ mu0) ** 2) / np.trace(sigma0)
    assert reg(torch.tensor(z)).item() == pytest.approx(expected, rel=1e-10)


def test_a_new_q_registered_once_works_in_paired_matching(fixed_q, batch):
    z, r, _ = batch
    reg = RIFT(D, match="paired", q=fixed_q).double()
    rot = reg.rotation.numpy()
    zc, rc = z - z.mean(0), r - r.mean(0)
    expected = np.sum((zc / np.linalg.norm(zc) - rc @ rot / np.linalg.norm(rc)) ** 2)
    assert reg(torch.tensor(z), torch.tensor(r)).item() == pytest.approx(expected, rel=1e-12)
    assert set(reg.state_dict()) >= {"q.rotation"}
