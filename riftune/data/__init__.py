"""Datasets for riftune: MedMNIST, MedMNIST-format ``.npz``, image folders and CSV tables.

Every source loads into :class:`ImageTensorDataset` splits whose items are
``(image, label, index)``: the image float32 (3, S, S) normalized, its class index and its
position in the split. :func:`load_dataset` is the entry point; :mod:`.sampling` holds the
samplers that make distributed training and resumption exact.
"""

from riftune.data.dataset import DatasetSplits, ImageTensorDataset
from riftune.data.load import load_dataset
from riftune.data.sampling import (
    BalancedBatchSampler,
    BatchLoader,
    GlobalBatchSampler,
    ShardedEvalSampler,
    make_loader,
)

__all__ = [
    "BalancedBatchSampler",
    "BatchLoader",
    "DatasetSplits",
    "GlobalBatchSampler",
    "ImageTensorDataset",
    "ShardedEvalSampler",
    "load_dataset",
    "make_loader",
]
