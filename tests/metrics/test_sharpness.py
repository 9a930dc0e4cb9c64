"""Adaptive sharpness: closed forms on linear and quadratic losses, and it leaves the model as it was."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from riftune.metrics import sharpness


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest on one intra-op thread (and avoid OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Linear(nn.Module):
    """L(w) = gᵀw + hᵀf, with f frozen: only w may move."""

    def __init__(self, w, g, h):
        super().__init__()
        self.w = nn.Parameter(w)
        self.f = nn.Parameter(torch.ones_like(h), requires_grad=False)
        self.register_buffer("g", g)
        self.register_buffer("h", h)

    def loss(self) -> torch.Tensor:
        return self.g @ self.w + self.h @ self.f


class Quadratic(nn.Module):
    """L(w) = ½ (w − w*)ᵀ A (w − w*), evaluated at its minimum w = w*."""

    def __init__(self, w_star, a):
        super().__init__()
        self.w = nn.Parameter(w_star.clone())
        self.register_buffer("w_star", w_star)
        self.register_buffer("a", a)

    def loss(self) -> torch.Tensor:
        r = self.w - self.w_star
        return 0.5 * r @ self.a @ r


def _own_loss(model, _batch):
    return model.loss()


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_linear_loss_has_the_closed_form_sharpness(adaptive, steps):
    # max over ‖ε/|w|‖ ≤ ρ of gᵀε is ρ‖g ⊙ |w|‖ (ρ‖g‖ without the adaptive scaling).
    w = torch.tensor([0.5, -2.0, 1.0, 0.0], dtype=torch.float64)
    g = torch.tensor([1.0, 0.5, -3.0, 2.0], dtype=torch.float64)
    model = Linear(w, g, h=torch.tensor([4.0, -1.0], dtype=torch.float64))
    rho = 0.1
    expected = rho * float((g * w.abs()).norm() if adaptive else g.norm())
    got = sharpness(model, _own_loss, [None], rho=rho, steps=steps, adaptive=adaptive)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("adaptive", [False, True])
def test_quadratic_at_its_minimum_reaches_half_rho_squared_top_eigenvalue(adaptive):
    # The gradient is 0 at the minimum, so the ascent starts from a seeded random direction and
    # converges, like a power iteration, to ½ρ²·λ_max(TAT).
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a = torch.from_numpy(q @ np.diag([4.0, 1.0, 0.5, 0.2, 0.1]) @ q.T)
    w_star = torch.tensor([1.0, -0.5, 2.0, 0.3, -1.0], dtype=torch.float64)
    t = w_star.abs() if adaptive else torch.ones(5, dtype=torch.float64)
    top = float(torch.linalg.eigvalsh(t[:, None] * a * t[None, :]).max())
    rho = 0.05
    got = sharpness(Quadratic(w_star, a), _own_loss, [None], rho=rho, steps=60, adaptive=adaptive)
    assert got == pytest.approx(0.5 * rho**2 * top, rel=1e-4)


def _network() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )


def _cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _batches(n_batches: int = 3):
    return [(torch.randn(12, 6), torch.randint(0, 3, (12,))) for _ in range(n_batches)]


def test_zero_at_rho_zero_and_positive_otherwise_in_eval_mode():
    model, batches = _network(), _batches()
    # Dropout active would make two evaluations of the same weights differ: ρ = 0 gives
    # exactly 0 only because the model runs in eval mode.
    model.train()
    assert sharpness(model, _cross_entropy, batches, rho=0.0) == 0.0
    values = [sharpness(model, _cross_entropy, batches, rho=r) for r in (0.01, 0.05, 0.2)]
    assert all(v > 0 for v in values)
    assert values[0] < values[1] < values[2]


def test_weights_buffers_gradients_and_modes_are_left_exactly_as_they_were():
    model, batches = _network(), _batches()
    model[0].weight.requires_grad_(False)
    model.train()
    model[1].eval()
    _cross_entropy(model, batches[0]).backward()  # existing .grad fields must survive
    before = copy.deepcopy(model.state_dict())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    modes = {n: m.training for n, m in model.named_modules()}
    assert sharpness(model, _cross_entropy, batches, rho=0.5, steps=4) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert {
        n: p.grad for n, p in model.named_parameters() if p.grad is not None
    }.keys() == grads.keys()
    assert all(
        torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None
    )
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_mean_over_batches_and_seeded():
    model, batches = _network(), _batches(4)
    per_batch = [sharpness(model, _cross_entropy, [b], rho=0.1) for b in batches]
    together = sharpness(model, _cross_entropy, batches, rho=0.1)
    assert together == pytest.approx(float(np.mean(per_batch)), rel=1e-6)
    assert sharpness(model, _cross_entropy, batches, rho=0.1) == together


def test_bad_arguments_raise():
    model = _network()
    with pytest.raises(ValueError, match="rho"):
        sharpness(model, _cross_entropy, _batches(1), rho=-0.1)
    with pytest.raises(ValueError, match="no batches"):
        sharpness(model, _cross_entropy, [], rho=0.1)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        sharpness(model, _cross_entropy, _batches(1))
