"""BalancedBatchSampler: classes drawn equally often, world-size invariant, exactly resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from riftune.data import BalancedBatchSampler, GlobalBatchSampler
from riftune.data.npz import read_npz
from riftune.data.sampling import train_batch_sampler
from riftune.errors import UserError


@pytest.fixture(scope="module")
def breast_labels(medmnist_dir: Path) -> torch.Tensor:
    """BreastMNIST's real training labels: 147 malignant (0) against 399 benign (1)."""
    return torch.from_numpy(read_npz(medmnist_dir / "breastmnist.npz")["train"][1])


def _epoch(sampler: BalancedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_classes_are_drawn_near_equally_over_epochs(breast_labels):
    counts = np.bincount(breast_labels.numpy())
    assert counts[1] > 2.5 * counts[0]  # the real file is imbalanced
    sampler = BalancedBatchSampler(breast_labels, global_batch_size=32, seed=3)
    drawn = torch.tensor(
        [i for epoch in range(20) for batch in _epoch(sampler, epoch) for i in batch]
    )
    per_class = np.bincount(breast_labels[drawn].numpy(), minlength=2) / len(drawn)
    # 20 epochs x 544 draws: the share's standard deviation is about 0.005
    np.testing.assert_allclose(per_class, [0.5, 0.5], atol=0.03)
    assert len(set(drawn.tolist())) > 0.95 * len(breast_labels)  # minority repeats, not only it


def test_each_epoch_is_a_fresh_seeded_draw_with_replacement(breast_labels):
    sampler = BalancedBatchSampler(breast_labels, global_batch_size=32, seed=3)
    first, second = _epoch(sampler, 0), _epoch(sampler, 1)
    assert first != second and first == _epoch(sampler, 0)
    assert len(first) == len(breast_labels) // 32 and all(len(b) == 32 for b in first)
    flat = [i for batch in first for i in batch]
    assert len(set(flat)) < len(flat)  # with replacement
    other_seed = BalancedBatchSampler(breast_labels, global_batch_size=32, seed=4)
    assert _epoch(other_seed, 0) != first


@pytest.mark.parametrize("world", [2, 4])
def test_global_batches_do_not_depend_on_the_world_size(breast_labels, world):
    single = _epoch(BalancedBatchSampler(breast_labels, 32, seed=5), 2)
    parts = [
        _epoch(BalancedBatchSampler(breast_labels, 32, 5, world, rank), 2) for rank in range(world)
    ]
    joined = [[i for part in parts for i in part[step]] for step in range(len(single))]
    assert joined == single
    assert all(len(part[0]) == 32 // world for part in parts)


@pytest.mark.parametrize("start", [0, 3, 17])
def test_resume_from_a_step_gives_the_same_remaining_batches(breast_labels, start):
    whole = _epoch(BalancedBatchSampler(breast_labels, 32, seed=7, world_size=2, rank=1), 4)
    resumed = BalancedBatchSampler(breast_labels, 32, seed=7, world_size=2, rank=1)
    resumed.set_epoch(4)
    resumed.set_start_step(start)
    assert len(resumed) == len(whole) - start
    assert list(resumed) == whole[start:]


def test_multilabel_targets_are_refused():
    with pytest.raises(UserError, match="--sampler balanced"):
        BalancedBatchSampler(torch.zeros(10, 3), global_batch_size=2, seed=0)


def test_train_batch_sampler_builds_the_named_kind(breast_labels):
    plain = train_batch_sampler("plain", breast_labels, 32, seed=1, world_size=2, rank=0)
    reference = GlobalBatchSampler(len(breast_labels), 32, 1, 2, 0)
    assert type(plain) is GlobalBatchSampler and list(plain) == list(reference)
    balanced = train_batch_sampler("balanced", breast_labels, 32, seed=1)
    assert list(balanced) == list(BalancedBatchSampler(breast_labels, 32, 1))
    with pytest.raises(UserError, match="unknown --sampler 'weighted'"):
        train_batch_sampler("weighted", breast_labels, 32, seed=1)
