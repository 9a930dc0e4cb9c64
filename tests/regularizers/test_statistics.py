"""StreamingMoments and gather_global_batch against NumPy, in one process.

The 2-process checks (all-reduce of moments, differentiable gather under DDP) live in
tests/regularizers/test_rift_distributed.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune.distributed import gather_global_batch, world_size
from riftune.regularizers.statistics import StreamingMoments


def _np_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_streaming_chunks_equal_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=7)
    xt = torch.tensor(x).to(dtype)
    reference = xt.double().numpy()  # what the accumulator sees, exactly
    moments = StreamingMoments(7)
    for chunk in torch.split(xt, [1, 40, 0, 50, 12]):
        moments.update(chunk)
    mean, cov = _np_moments(reference)
    assert moments.count == 103
    assert moments.mean().dtype == torch.float64
    np.testing.assert_allclose(moments.mean().numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moments.covariance().numpy(), cov, rtol=1e-11, atol=1e-12)


def test_large_offset_keeps_float64_accuracy():
    """Centering is exact: a mean 1e6 times the spread costs no accuracy in the covariance."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)) + 1e6
    moments = StreamingMoments(4)
    for chunk in np.array_split(x, 9):
        moments.update(torch.tensor(chunk))
    _, cov = _np_moments(x)
    np.testing.assert_allclose(moments.covariance().numpy(), cov, rtol=1e-8, atol=1e-9)


def test_merge_equals_concatenation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(11, 5)) * 3 + 2
    left = StreamingMoments(5).update(torch.tensor(a))
    right = StreamingMoments(5).update(torch.tensor(b))
    left.merge(right).merge(StreamingMoments(5))
    mean, cov = _np_moments(np.concatenate([a, b]))
    np.testing.assert_allclose(left.mean().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(left.covariance().numpy(), cov, rtol=1e-11)
    empty = StreamingMoments(5).merge(right)
    np.testing.assert_allclose(empty.covariance().numpy(), np.cov(b, rowvar=False))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda s: sum(s) >= 2),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_split_equals_one_shot(sizes, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(sizes), dim)) * rng.uniform(0.1, 10) + rng.normal(size=dim)
    chunks = np.split(x, np.cumsum(sizes)[:-1])
    streamed = StreamingMoments(dim)
    halves = [StreamingMoments(dim), StreamingMoments(dim)]
    for i, chunk in enumerate(chunks):
        streamed.update(torch.tensor(chunk))
        halves[i % 2].update(torch.tensor(chunk))
    merged = halves[0].merge(halves[1])
    mean, cov = _np_moments(x)
    for m in (streamed, merged):
        np.testing.assert_allclose(m.mean().numpy(), mean, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(m.covariance().numpy(), cov, rtol=1e-9, atol=1e-9)


def test_bad_input():
    moments = StreamingMoments(3)
    with pytest.raises(ValueError, match="shape"):
        moments.update(torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        moments.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="no rows"):
        moments.mean()
    moments.update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        moments.covariance()
    with pytest.raises(ValueError, match="dimension"):
        moments.merge(StreamingMoments(4))
    with pytest.raises(ValueError, match="positive"):
        StreamingMoments(0)


def test_single_process_all_reduce_and_gather_are_identity():
    assert world_size() == 1
    x = torch.randn(5, 3, requires_grad=True)
    assert gather_global_batch(x) is x
    moments = StreamingMoments(3).update(x)
    before = moments.covariance()
    assert torch.equal(moments.all_reduce().covariance(), before)
