"""Top Hessian eigenvalue by power iteration: known quadratics and a full Hessian of a small network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from riftune.metrics import hessian_top_eigenvalue


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest on one intra-op thread (and avoid OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw + bᵀw over w = (u, v) split into two parameters, so H = A."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.u = nn.Parameter(torch.randn(2, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def loss(self) -> torch.Tensor:
        w = torch.cat([self.u, self.v])
        return 0.5 * w @ self.a @ w + self.b @ w


def _own_loss(model, _batch):
    return model.loss()


def _matrix(eigenvalues, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return torch.from_numpy(q @ np.diag(eigenvalues) @ q.T)


@pytest.mark.parametrize(
    ("eigenvalues", "top"),
    [([6.0, 3.0, -2.0, 1.0, 0.5], 6.0), ([-5.0, 2.0, 1.0, 0.1, 0.0], -5.0)],
)
def test_finds_the_dominant_eigenvalue_of_a_known_quadratic(eigenvalues, top):
    model = Quadratic(_matrix(eigenvalues), torch.ones(5, dtype=torch.float64))
    assert hessian_top_eigenvalue(model, _own_loss, [None]) == pytest.approx(top, rel=1e-3)
    precise = hessian_top_eigenvalue(model, _own_loss, [None], iters=200, tol=1e-12)
    assert precise == pytest.approx(top, rel=1e-9)


def test_a_loss_linear_in_the_parameters_has_zero_curvature():
    model = Quadratic(torch.zeros(5, 5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    assert hessian_top_eigenvalue(model, _own_loss, [None]) == 0.0


def _network() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    model[0].bias.requires_grad_(False)  # frozen: not part of the Hessian
    return model


def _batches():
    g = torch.Generator().manual_seed(4)
    return [
        (
            torch.randn(10, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (10,), generator=g),
        )
        for _ in range(2)
    ]


def _cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def test_matches_the_full_hessian_of_a_small_network_in_eval_mode():
    model, batches = _network(), _batches()
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])

    def mean_loss(w):
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = w[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return sum(
            _cross_entropy(lambda x: functional_call(model, params, (x,)), b) for b in batches
        ) / len(batches)

    model.eval()
    full = torch.autograd.functional.hessian(mean_loss, flat)
    eigenvalues = np.linalg.eigvalsh(full.numpy())
    expected = eigenvalues[np.abs(eigenvalues).argmax()]
    model.train()
    before = copy.deepcopy(model.state_dict())
    got = hessian_top_eigenvalue(model, _cross_entropy, batches, iters=300, tol=1e-10)
    assert got == pytest.approx(expected, rel=1e-6)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert hessian_top_eigenvalue(model, _cross_entropy, batches, seed=1) == pytest.approx(
        expected, rel=1e-2
    )


def test_bad_arguments_raise():
    model = _network()
    with pytest.raises(ValueError, match="no batches"):
        hessian_top_eigenvalue(model, _cross_entropy, [])
    with pytest.raises(ValueError, match="iters"):
        hessian_top_eigenvalue(model, _cross_entropy, _batches(), iters=0)
