"""Samplers (global batches split across ranks, exact resume, eval shards), loaders, few-shot."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from riftune.data import (
    BatchLoader,
    GlobalBatchSampler,
    ShardedEvalSampler,
    load_dataset,
    make_loader,
)
from riftune.data.fewshot import sample_shots
from riftune.errors import UserError


def _reference_batches(
    n: int, batch: int, seed: int, epoch: int, drop_last: bool
) -> list[list[int]]:
    """Independent construction: one seeded permutation, cut into consecutive global batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    stop = (n // batch) * batch if drop_last else n
    return [order[i : i + batch] for i in range(0, stop, batch)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    world=st.sampled_from([1, 2, 3, 4]),
    per_rank=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
    drop_last=st.booleans(),
)
def test_union_of_rank_parts_is_the_single_process_batch(
    n, world, per_rank, seed, epoch, drop_last
) -> None:
    batch = world * per_rank
    remainder = n % batch
    if (drop_last and n < batch) or (not drop_last and 0 < remainder < world):
        with pytest.raises(ValueError):
            GlobalBatchSampler(n, batch, seed, world, 0, drop_last=drop_last)
        return
    samplers = [
        GlobalBatchSampler(n, batch, seed, world, rank, drop_last=drop_last)
        for rank in range(world)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    expected = _reference_batches(n, batch, seed, epoch, drop_last)
    parts = [list(sampler) for sampler in samplers]
    assert all(len(p) == len(expected) == len(s) for p, s in zip(parts, samplers, strict=True))
    for step, global_batch in enumerate(expected):
        rank_parts = [parts[rank][step] for rank in range(world)]
        assert list(chain(*rank_parts)) == global_batch  # contiguous parts, rank order
        if len(global_batch) == batch:
            assert all(len(part) == per_rank for part in rank_parts)
        else:
            assert max(map(len, rank_parts)) - min(map(len, rank_parts)) <= 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(8, 100),
    world=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_resume_from_step_k_yields_the_remaining_batches(n, world, seed, data) -> None:
    batch = 2 * world
    for rank in range(world):
        full = GlobalBatchSampler(n, batch, seed, world, rank)
        full.set_epoch(3)
        batches = list(full)
        k = data.draw(st.integers(0, len(batches)))
        resumed = GlobalBatchSampler(n, batch, seed, world, rank)
        resumed.set_epoch(3)
        resumed.set_start_step(k)
        assert len(resumed) == len(batches) - k
        assert list(resumed) == batches[k:]
        resumed.set_epoch(4)  # a new epoch starts at its first step again
        assert len(list(resumed)) == len(batches)


def test_epochs_differ_and_cover_the_dataset() -> None:
    sampler = GlobalBatchSampler(50, 10, seed=7)
    first = list(chain(*sampler))
    sampler.set_epoch(1)
    second = list(chain(*sampler))
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    ordered = GlobalBatchSampler(10, 4, seed=0, drop_last=False, shuffle=False)
    assert list(ordered) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_sampler_errors() -> None:
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        GlobalBatchSampler(100, 32, 0, world_size=3)
    with pytest.raises(UserError, match="exceeds the 10 training images"):
        GlobalBatchSampler(10, 16, 0)
    with pytest.raises(ValueError, match="rank 2"):
        GlobalBatchSampler(100, 32, 0, world_size=2, rank=2)
    with pytest.raises(ValueError, match="start step"):
        GlobalBatchSampler(100, 32, 0).set_start_step(4)


@pytest.mark.parametrize(("n", "world"), [(0, 2), (5, 1), (7, 3), (156, 4), (3, 8)])
def test_eval_shards_partition_the_dataset(n: int, world: int) -> None:
    shards = [list(ShardedEvalSampler(n, world, rank)) for rank in range(world)]
    assert sorted(chain(*shards)) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards[0] == list(range(0, n, world))


def test_loaders_over_real_breastmnist(medmnist_dir: Path) -> None:
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28)
    sampler = GlobalBatchSampler(len(data.train), 64, seed=0, world_size=2, rank=1)
    batches = list(make_loader(data.train, batch_sampler=sampler))
    assert len(batches) == 546 // 64
    images, labels, indices = batches[2]
    assert images.shape == (32, 3, 28, 28) and images.dtype == torch.float32
    assert indices.tolist() == list(sampler)[2]
    assert torch.equal(labels, data.train.labels[indices])
    evaluated = [
        make_loader(data.test, 50, sampler=ShardedEvalSampler(len(data.test), 2, r)) for r in (0, 1)
    ]
    seen = torch.cat([idx for loader in evaluated for _, _, idx in loader])
    assert sorted(seen.tolist()) == list(range(156))
    with pytest.raises(ValueError, match="exactly one"):
        make_loader(data.test)


def test_sample_shots_is_seeded_and_per_class() -> None:
    labels = np.repeat(np.arange(3), [5, 8, 4])
    chosen = sample_shots(labels, 3, seed=11, num_classes=3)
    assert np.bincount(labels[chosen]).tolist() == [3, 3, 3]
    assert np.array_equal(chosen, np.sort(chosen)) and len(set(chosen)) == 9
    assert np.array_equal(chosen, sample_shots(labels, 3, seed=11, num_classes=3))
    draws = {tuple(sample_shots(labels, 3, seed=s, num_classes=3)) for s in range(10)}
    assert len(draws) > 1
    with pytest.raises(
        UserError, match=r"class 2 \(c\) has only 4 training images; lower --shots to at most 4"
    ):
        sample_shots(labels, 5, seed=0, num_classes=3, class_names=["a", "b", "c"])
    with pytest.raises(UserError, match="at least 1"):
        sample_shots(labels, 0, seed=0, num_classes=3)


def test_shots_on_real_breastmnist(medmnist_dir: Path) -> None:
    full = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28)
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28, shots=5, seed=2)
    assert len(data.train) == 10 and np.bincount(data.train.labels.numpy()).tolist() == [5, 5]
    assert (len(data.val), len(data.test)) == (78, 156)
    source = data.train.source_indices
    assert torch.equal(data.train.labels, full.train.labels[source])
    for i in range(10):
        image, _, index = data.train[i]
        assert int(index) == i
        assert torch.equal(image, full.train[int(source[i])][0])
    other = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28, shots=5, seed=3)
    assert not torch.equal(other.train.source_indices, source)
    malignant = int((full.train.labels == 0).sum())
    with pytest.raises(UserError, match=f"class 0 \\(malignant\\) has only {malignant}"):
        load_dataset("breastmnist", data_root=medmnist_dir, shots=malignant + 1)


@pytest.mark.parametrize("augment", [False, True])
def test_batch_loader_equals_data_loader(medmnist_dir: Path, augment: bool) -> None:
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=24, augment=augment)
    data.train.set_epoch(2)
    sampler = GlobalBatchSampler(len(data.train), 32, seed=1, world_size=2, rank=0)
    sampler.set_epoch(2)
    direct = list(BatchLoader(data.train, sampler))
    assert len(direct) == len(sampler) == 546 // 32
    for ours, reference in zip(direct, make_loader(data.train, batch_sampler=sampler), strict=True):
        for got, expected in zip(ours, reference, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    moved = data.val.to("cpu")
    images, labels, indices = moved.batch([3, 1])
    assert images.shape == (2, 3, 24, 24) and indices.tolist() == [3, 1]
    assert torch.equal(labels, data.val.labels[[3, 1]])
