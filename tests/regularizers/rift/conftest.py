"""NumPy references and helpers shared by RIFT's tests, as session fixtures that return the
function (a test asks for ``np_cov``, ``build`` and so on by name and calls it).

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

# ----------------------------------------------------------------------- NumPy references


@pytest.fixture(scope="session")
def np_cov():
    def np_cov(x):
        """The unbiased covariance of the rows of ``x``, (d, d) also for d = 1."""
        return np.atleast_2d(np.cov(x, rowvar=False, ddof=1))

    return np_cov


@pytest.fixture(scope="session")
def np_householder():
    def np_householder(reflectors):
        """Q = −H(u_1)⋯H(u_d), H(u) = I − 2uuᵀ/uᵀu, multiplied out one reflection at a time."""
        d = len(reflectors)
        q = -np.eye(d)
        for u in reflectors.T:
            q = q @ (np.eye(d) - 2 * np.outer(u, u) / (u @ u))
        return q

    return np_householder


@pytest.fixture(scope="session")
def np_covariance_loss(np_cov):
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

    return np_covariance_loss


@pytest.fixture(scope="session")
def np_paired_loss():
    def np_paired_loss(z, r, q, w, rot=None):
        """The paired-matching loss (docstring formula); the optimal Q by SciPy's Procrustes."""
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

    return np_paired_loss


@pytest.fixture(scope="session")
def rotation_np(np_householder):
    def rotation_np(reg):
        """A learned Q's matrix, multiplied out in NumPy from its reflectors."""
        return np_householder(reg.q.rotation.reflectors.detach().double().numpy())

    return rotation_np


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def make_data():
    def make_data(n, d, seed=0, n_ref=64):
        """(reference features (n_ref, d), a batch z (n, d), its pretrained embeddings)."""
        rng = np.random.default_rng(seed)
        mix = rng.normal(size=(d, d)) / np.sqrt(d)
        features = rng.normal(size=(n_ref, d)) @ mix * 2 + rng.normal(size=d)
        z = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
        reference = z @ mix.T + 0.3 * rng.normal(size=(n, d))
        return features, z, reference

    return make_data


@pytest.fixture(scope="session")
def build():
    def build(d, features, q, match="covariance", seed=0, dtype=torch.float64, **kwargs):
        """A fitted RIFT in ``dtype``; a learned Q starts at a random rotation."""
        reg = RIFT(d, match=match, q=q, **kwargs).to(dtype)
        reg.fit_reference(torch.tensor(features))
        if q == "learned":
            with torch.no_grad():
                gen = torch.randn(d, d, generator=torch.Generator().manual_seed(seed + 7))
                reg.q.rotation.reflectors.copy_(gen)
        return reg

    return build


@pytest.fixture(scope="session")
def call():
    def call(reg, z, reference=None):
        """``reg``'s loss of ``z``, with ``reference`` for paired matching."""
        return reg(z, reference) if reg.match == "paired" else reg(z)

    return call


@pytest.fixture(scope="session")
def one_thread():
    @contextlib.contextmanager
    def one_thread():
        """Tiny matrices in long loops run fastest without intra-op threads."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    return one_thread


@pytest.fixture(scope="session")
def optimize_rotation(call, one_thread):
    def optimize_rotation(reg, z, reference, steps, lr):
        """Train ``reg``'s Q alone with Adam on a cosine schedule; the final loss."""
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

    return optimize_rotation
