"""Samplers that make training independent of the number of processes, and a loader helper.

:class:`GlobalBatchSampler` cuts one seeded order per epoch into global batches and gives
each rank one contiguous, equal part of every global batch, so a step sees the same global
batch whatever the world size, and a resumed run continues from the exact step it stopped.
:class:`BalancedBatchSampler` does the same over a class-balanced draw with replacement.
:class:`ShardedEvalSampler` gives each rank a strided shard of an evaluation set, without
padding or duplicates. :class:`BatchLoader` turns index batches into tensor batches straight
from an in-memory dataset (:func:`eval_loader`: this rank's shard of an evaluation set);
:func:`make_loader` does it through a ``torch`` DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from riftune.data.dataset import ImageTensorDataset, Item
from riftune.errors import UserError

if TYPE_CHECKING:
    from riftune.distributed import DistributedContext


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's part of each global batch of one seeded permutation per epoch.

    Epoch e's order is ``torch.randperm(dataset_size)`` drawn from a ``torch.Generator``
    seeded with ``seed + e`` (``range(dataset_size)`` when ``shuffle`` is off). It is cut
    into consecutive global batches of ``global_batch_size``; each global batch is cut into
    ``world_size`` contiguous equal parts and rank r gets part r. With ``drop_last`` off the
    last, shorter global batch is split as evenly as possible (parts differ by at most one).

    Args:
        dataset_size: number of items N.
        global_batch_size: items per step over all ranks, B; divisible by ``world_size``.
        seed: base seed of the per-epoch permutations.
        world_size: number of ranks.
        rank: this rank, in ``[0, world_size)``.
        drop_last: drop the last global batch when shorter than B.
        shuffle: permute per epoch; otherwise keep dataset order.

    Raises:
        UserError: B not divisible by the world size, or larger than N with ``drop_last``.
        ValueError: a bad rank, or, with ``drop_last`` off, a last batch too small to give
            every rank an item.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size < 1 or world_size < 1:
            raise ValueError(
                f"batch size and world size must be positive; got {global_batch_size}, {world_size}"
            )
        if global_batch_size % world_size:
            raise UserError(
                f"--batch-size {global_batch_size} is not divisible by the {world_size} processes; "
                "use a multiple of the process count"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if drop_last and dataset_size < global_batch_size:
            raise UserError(
                f"--batch-size {global_batch_size} exceeds the {dataset_size} training images; "
                "lower --batch-size"
            )
        remainder = dataset_size % global_batch_size
        if not drop_last and 0 < remainder < world_size:
            raise ValueError(
                f"the last batch of {remainder} images cannot give each of {world_size} "
                "processes one; use drop_last"
            )
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        full, remainder = divmod(self.dataset_size, self.global_batch_size)
        return full + (1 if remainder and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from now on, starting at its first step."""
        self.epoch = epoch
        self.start_step = 0

    def set_start_step(self, step: int) -> None:
        """Skip the first ``step`` batches of the current epoch (exact resume mid-epoch)."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"start step {step} is outside [0, {self.steps_per_epoch}]")
        self.start_step = step

    def global_order(self) -> torch.Tensor:
        """The current epoch's order of all items. Shape: (N,) int64."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.global_order()
        for step in range(self.start_step, self.steps_per_epoch):
            batch = order[step * self.global_batch_size : (step + 1) * self.global_batch_size]
            yield torch.tensor_split(batch, self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        """Batches left in the current epoch (all of them unless a start step was set)."""
        return self.steps_per_epoch - self.start_step


class BalancedBatchSampler(GlobalBatchSampler):
    """:class:`GlobalBatchSampler` over a class-balanced draw with replacement per epoch.

    Epoch e draws N = ``len(labels)`` items with replacement, item i with probability
    pᵢ = 1 / (C · n_{yᵢ}) (C the classes present, n_c their counts), so every class is drawn
    equally often in expectation; the draw uses a ``torch.Generator`` seeded with
    ``seed + e``. The draw is cut into global batches and split across ranks exactly as
    :class:`GlobalBatchSampler` does, so the batches do not depend on the world size and
    :meth:`set_epoch` / :meth:`set_start_step` resume at the exact step.

    Args:
        labels: the training split's class indices. Shape: (N,) integers.
        global_batch_size: items per step over all ranks, B.
        seed: base seed of the per-epoch draws.
        world_size: number of ranks.
        rank: this rank.
        drop_last: drop the last global batch when shorter than B.

    Raises:
        UserError: multi-label targets (balanced sampling is defined per class), or the
            errors of :class:`GlobalBatchSampler`.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        global_batch_size: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise UserError(
                "--sampler balanced needs one class per image; for multi-label data use "
                "--sampler plain (and --class-weights balanced)"
            )
        super().__init__(len(labels), global_batch_size, seed, world_size, rank, drop_last)
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self.probabilities = (1.0 / (len(counts) * counts.double()))[inverse]

    def global_order(self) -> torch.Tensor:
        """The current epoch's class-balanced draw of N items. Shape: (N,) int64."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(
            self.probabilities, self.dataset_size, replacement=True, generator=generator
        )


class ShardedEvalSampler(Sampler[int]):
    """Rank r's strided shard ``r, r + W, r + 2W, ...`` of an evaluation set, in order.

    The shards partition ``range(dataset_size)``: no item is repeated and none is added
    (no padding), so shard lengths differ by at most one. Gather per-item results with
    their indices (each item carries its index) rather than assuming equal shard sizes.

    Args:
        dataset_size: number of items N.
        world_size: number of ranks W.
        rank: this rank, in ``[0, W)``.
    """

    def __init__(self, dataset_size: int, world_size: int = 1, rank: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int | None = None,
    *,
    batch_sampler: Sampler[list[int]] | None = None,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``(image, label, index)`` items in a fixed, sampler-given order.

    Give either ``batch_sampler`` (training: :class:`GlobalBatchSampler`) or ``batch_size``
    with an optional ``sampler`` (evaluation: :class:`ShardedEvalSampler`; default: dataset
    order); the last evaluation batch is kept even when shorter. Workers are not persistent,
    so that :meth:`ImageTensorDataset.set_epoch` reaches them every epoch. The default
    ``num_workers=0`` suits the in-memory datasets of :mod:`riftune.data`, whose items cost
    only a cast and a multiply-add.

    Raises:
        ValueError: both or neither of ``batch_sampler`` and ``batch_size``.
    """
    if (batch_sampler is None) == (batch_size is None):
        raise ValueError("give exactly one of batch_size and batch_sampler")
    if batch_sampler is None:
        batch_sampler = BatchSampler(sampler or range(len(dataset)), batch_size, drop_last=False)
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=pin_memory
    )


class BatchLoader:
    """Batches straight from an in-memory dataset, one :meth:`ImageTensorDataset.batch` each.

    The fastest way to feed a model from :mod:`riftune.data`: no workers, no per-item
    collation, and with the dataset moved to the GPU (:meth:`ImageTensorDataset.to`) no
    host-to-device copy of images. Yields the same batches as :func:`make_loader` with the
    same batch sampler, on the dataset's device.

    Args:
        dataset: the split to read.
        batch_sampler: lists of indices per batch (:class:`GlobalBatchSampler`, or a
            ``BatchSampler`` over :class:`ShardedEvalSampler`).
    """

    def __init__(self, dataset: ImageTensorDataset, batch_sampler: Sampler[list[int]]) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[Item]:
        for indices in self.batch_sampler:
            yield self.dataset.batch(indices)

    def __len__(self) -> int:
        return len(self.batch_sampler)


SAMPLERS = ("plain", "balanced")


def train_batch_sampler(
    kind: str,
    labels: torch.Tensor,
    global_batch_size: int,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
) -> GlobalBatchSampler:
    """The training batch sampler ``--sampler`` names, with ``drop_last``.

    ``plain``: :class:`GlobalBatchSampler` (a seeded permutation per epoch); ``balanced``:
    :class:`BalancedBatchSampler` (class-balanced draws with replacement).

    Args:
        kind: ``plain`` or ``balanced``.
        labels: the training split's labels (their count is the dataset size). Shape: (N,)
            (multi-label (N, L) only with ``plain``).

    Raises:
        UserError: an unknown kind, or what the samplers refuse.
    """
    if kind == "plain":
        return GlobalBatchSampler(len(labels), global_batch_size, seed, world_size, rank)
    if kind == "balanced":
        return BalancedBatchSampler(labels, global_batch_size, seed, world_size, rank)
    raise UserError(f"unknown --sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")


def eval_loader(
    dataset: ImageTensorDataset, batch_size: int, ctx: DistributedContext
) -> BatchLoader:
    """Batches of this rank's strided shard of ``dataset`` (items rank, rank + W, ...), in order.

    :func:`riftune.metrics.collect` gathers the shards, so every rank sees the whole split.
    """
    shard = ShardedEvalSampler(len(dataset), world_size=ctx.world_size, rank=ctx.rank)
    return BatchLoader(
        dataset.without_augmentation(), BatchSampler(shard, batch_size, drop_last=False)
    )
