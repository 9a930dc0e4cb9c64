"""Datasets for riftune: MedMNIST, MedMNIST-format ``.npz``, image folders and CSV tables.

A ``--data`` value is read by the format registry (:mod:`.formats`: one module per format),
whatever the command. Every source loads into :class:`ImageTensorDataset` splits whose items
are ``(image, label, index)``: the image float32 (3, S, S) normalized, its class index and its
position in the split. :func:`load_dataset` is the entry point for labelled splits,
:func:`load_new_images` for images to classify; :mod:`.sampling` holds the samplers and
loaders that make distributed training, evaluation and resumption exact. Modules here import
only each other, :mod:`riftune.errors` and :mod:`riftune.registry` (and, for a type hint,
:mod:`riftune.distributed`).
"""

from riftune.data.dataset import DatasetSplits, ImageTensorDataset
from riftune.data.load import load_dataset, load_new_images
from riftune.data.sampling import (
    BalancedBatchSampler,
    BatchLoader,
    GlobalBatchSampler,
    ShardedEvalSampler,
    eval_loader,
    make_loader,
)

__all__ = [
    "BalancedBatchSampler",
    "BatchLoader",
    "DatasetSplits",
    "GlobalBatchSampler",
    "ImageTensorDataset",
    "ShardedEvalSampler",
    "eval_loader",
    "load_dataset",
    "load_new_images",
    "make_loader",
]
