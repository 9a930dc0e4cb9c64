"""NumPy references and helpers shared by RIFT's tests, as session fixtures (a test asks for
``np_cov``, ``build`` and so on by name).

The NumPy references are written from the formulas in RIFT's docstrings, with np.cov,
np.linalg.eigvalsh and scipy's orthogonal Procrustes solver, not from the module's code paths
(no Gram-matrix tricks, no QR, no Cayley solver).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from riftune.regularizers.rift import RIFT


def _np_cov(x):
    return np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def _np_householder(reflectors):
    """Q = −H(u_1)⋯H(u_d), H(u) = I − 2uuᵀ/uᵀu, multiplied out one reflection at a time."""
    d = len(reflectors)
    q = -np.eye(d)
    for u in reflectors.T:
        q = q @ (np.eye(d) - 2 * np.outer(u, u) / (u @ u))
    return q


def _np_covariance_loss(sigma, mean, features, q, normalize, w, rot=None):
    """The covariance-matching loss from a statistic Σ̄, μ̄ (docstring formula)."""
    mu0, sigma0 = features.mean(0), _np_cov(features)
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


def _np_paired_loss(z, r, q, w, rot=None):
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


def _make_data(n, d, seed=0, n_ref=64):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    features = rng.normal(size=(n_ref, d)) @ mix * 2 + rng.normal(size=d)
    z = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
    reference = z @ mix.T + 0.3 * rng.normal(size=(n, d))
    return features, z, reference


def _build(d, features, q, match="covariance", seed=0, dtype=torch.float64, **kwargs):
    """A fitted RIFT in ``dtype``; a learned Q starts at a random rotation."""
    reg = RIFT(d, match=match, q=q, **kwargs).to(dtype)
    reg.fit_reference(torch.tensor(features))
    if q == "learned":
        with torch.no_grad():
            gen = torch.randn(d, d, generator=torch.Generator().manual_seed(seed + 7))
            reg.q.rotation.reflectors.copy_(gen)
    return reg


def _rotation_np(reg):
    return _np_householder(reg.q.rotation.reflectors.detach().double().numpy())


def _call(reg, z, reference=None):
    return reg(z, reference) if reg.match == "paired" else reg(z)


@contextlib.contextmanager
def _one_thread():
    """Tiny matrices in long loops run fastest without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _optimize_rotation(reg, z, reference, steps, lr):
    opt = torch.optim.Adam(reg.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with _one_thread():
        for _ in range(steps):
            loss = _call(reg, z, reference)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        with torch.no_grad():
            return _call(reg, z, reference).item()


@pytest.fixture(scope="session")
def np_cov():
    return _np_cov


@pytest.fixture(scope="session")
def np_householder():
    return _np_householder


@pytest.fixture(scope="session")
def np_covariance_loss():
    return _np_covariance_loss


@pytest.fixture(scope="session")
def np_paired_loss():
    return _np_paired_loss


@pytest.fixture(scope="session")
def make_data():
    return _make_data


@pytest.fixture(scope="session")
def build():
    return _build


@pytest.fixture(scope="session")
def rotation_np():
    return _rotation_np


@pytest.fixture(scope="session")
def call():
    return _call


@pytest.fixture(scope="session")
def one_thread():
    return _one_thread


@pytest.fixture(scope="session")
def optimize_rotation():
    return _optimize_rotation
