"""linear_cka and StreamingCKA against an independent NumPy implementation on Gram matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from riftune.metrics import StreamingCKA, linear_cka


def numpy_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """CKA from the raw Gram matrices: HSIC = tr(KHLH), or Song et al.'s unbiased estimator."""
    k, l_ = x @ x.T, y @ y.T
    n = k.shape[0]

    def hsic(a, b):
        if not debiased:
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(a @ h @ b @ h)
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        return (
            np.trace(a @ b)
            + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ a @ b @ one)
        ) / (n * (n - 3))

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def _pair(n, dx, dy, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) + offset
    y = x @ rng.normal(size=(dx, dy)) + 0.7 * rng.normal(size=(n, dy)) + offset
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(
    ("n", "dx", "dy"),
    [(4, 3, 5), (7, 10, 2), (20, 6, 6), (50, 80, 3), (9, 30, 40), (64, 5, 9)],
)
def test_linear_cka_matches_numpy(n, dx, dy, debiased):
    x, y = _pair(n, dx, dy, seed=n + dx, offset=1.5)
    expected = numpy_cka(x, y, debiased)
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y), debiased=debiased)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(debiased):
    x, y = _pair(30, 8, 12, seed=3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    base = float(linear_cka(xt, yt, debiased=debiased))
    qx = torch.from_numpy(ortho_group.rvs(8, random_state=1))
    qy = torch.from_numpy(ortho_group.rvs(12, random_state=2))
    transformed = [
        (xt @ qx, yt @ qy),  # orthogonal maps
        (3.7 * xt, 0.01 * yt),  # isotropic scaling
        (xt + torch.linspace(-5, 5, 8), yt - 2.0),  # translation
        (2.0 * xt @ qx + 1.0, yt @ qy - 3.0),  # all three
    ]
    for a, b in transformed:
        assert float(linear_cka(a, b, debiased=debiased)) == pytest.approx(base, rel=1e-9)
    # Not invariant to an anisotropic scaling: the test can tell the difference.
    stretched = xt * torch.logspace(-2, 2, 8, dtype=torch.float64)
    assert abs(float(linear_cka(stretched, yt, debiased=debiased)) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n", [4, 5, 50])
def test_cka_of_a_representation_with_itself_is_one(n, debiased):
    x = torch.randn(n, 7, dtype=torch.float64)
    q = torch.from_numpy(ortho_group.rvs(7, random_state=0))
    assert float(linear_cka(x, x, debiased=debiased)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(x, 2 * x @ q + 1, debiased=debiased)) == pytest.approx(1.0, abs=1e-12)


def test_independent_representations_have_low_cka():
    x, y = torch.randn(2000, 3), torch.randn(2000, 3)
    assert float(linear_cka(x, y)) < 0.01
    assert abs(float(linear_cka(x, y, debiased=True))) < 0.01


@pytest.mark.parametrize(("n", "debiased"), [(2, False), (3, False), (4, True), (6, True)])
def test_gradients_at_the_smallest_n_are_finite_and_correct(n, debiased):
    x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    value = linear_cka(x, y, debiased=debiased)
    gx, gy = torch.autograd.grad(value, (x, y))
    assert torch.isfinite(value) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    assert torch.autograd.gradcheck(lambda a, b: linear_cka(a, b, debiased=debiased), (x, y))


def test_gradient_flows_through_float32_and_bfloat16_inputs():
    x = torch.randn(16, 4, requires_grad=True)
    y = torch.randn(16, 6)
    value = linear_cka(x, y)
    assert value.dtype == torch.float32
    value.backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert linear_cka(x.bfloat16(), y.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("debiased", [False, True])
def test_constant_features_give_finite_value_and_gradient(debiased):
    x = torch.full((6, 4), 3.7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 5, dtype=torch.float64)
    value = linear_cka(x, y, debiased=debiased)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_feature_sizes_may_differ_and_gram_and_feature_paths_agree():
    # n(dx + dy) < dx·dy takes the n×n Gram path; the transposed problem takes the d×d path.
    x, y = _pair(6, 40, 50, seed=9)
    got = float(linear_cka(torch.from_numpy(x), torch.from_numpy(y)))
    assert got == pytest.approx(numpy_cka(x, y, False), rel=1e-10)


@pytest.mark.parametrize(
    ("x", "y", "debiased", "match"),
    [
        (torch.randn(5), torch.randn(5, 2), False, "2-D"),
        (torch.randn(5, 2, 2), torch.randn(5, 2), False, "2-D"),
        (torch.randn(5, 2), torch.randn(6, 2), False, "same samples"),
        (torch.randn(1, 2), torch.randn(1, 2), False, "at least 2"),
        (torch.randn(3, 2), torch.randn(3, 2), True, "at least 4"),
    ],
)
def test_bad_input_raises(x, y, debiased, match):
    with pytest.raises(ValueError, match=match):
        linear_cka(x, y, debiased=debiased)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda s: sum(s) >= 4),
    dx=st.integers(1, 6),
    dy=st.integers(1, 6),
    offset=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 10_000),
)
def test_streaming_equals_cka_of_the_concatenation(sizes, dx, dy, offset, seed):
    x, y = _pair(sum(sizes), dx, dy, seed=seed, offset=offset)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for debiased in (False, True):
        metric = StreamingCKA(debiased=debiased)
        start = 0
        for size in sizes:
            metric.update(xt[start : start + size].float(), yt[start : start + size].float())
            start += size
        expected = float(linear_cka(xt.float().double(), yt.float().double(), debiased=debiased))
        assert float(metric.compute()) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_streaming_is_not_a_mean_of_batch_ckas_and_resets():
    x, y = _pair(40, 3, 3, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    metric = StreamingCKA()
    metric.update(torch.randn(10, 3), torch.randn(10, 3))
    metric.reset()
    batch_values = []
    for i in range(0, 40, 8):
        metric.update(xt[i : i + 8], yt[i : i + 8])
        batch_values.append(float(linear_cka(xt[i : i + 8], yt[i : i + 8])))
    assert float(metric.compute()) == pytest.approx(float(linear_cka(xt, yt)), rel=1e-12)
    assert abs(float(metric.compute()) - np.mean(batch_values)) > 1e-3


def test_streaming_bad_use_raises():
    metric = StreamingCKA(debiased=True)
    with pytest.raises(ValueError, match="before update"):
        metric.compute()
    metric.update(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 4"):
        metric.compute()
    with pytest.raises(ValueError, match="feature sizes"):
        metric.update(torch.randn(3, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="same samples"):
        metric.update(torch.randn(3, 2), torch.randn(2, 4))
