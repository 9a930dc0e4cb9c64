"""What the baseline regularizers' tests share: NumPy's linear CKA, a tiny CNN and classifier,
a PretrainedView, a state round trip through a real checkpoint file, random batches, and a pair
of related embeddings (the ``pair`` fixture).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from riftune.models.classifier import Classifier
from riftune.regularizers.base import PretrainedView
from riftune.runs import checkpoint_file as ckpt


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def view(model: nn.Module, embeddings: torch.Tensor, **extra) -> PretrainedView:
    """A PretrainedView; fields the dataclass does not (yet) declare are set as attributes."""
    declared = {f.name for f in dataclasses.fields(PretrainedView)}
    result = PretrainedView(
        model=model,
        train_embeddings=embeddings,
        **{k: v for k, v in extra.items() if k in declared},
    )
    for key, value in extra.items():
        if key not in declared:
            setattr(result, key, value)
    return result


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def tiny_classifier(backbone: nn.Module | None = None, dim: int = 5, k: int = 3) -> Classifier:
    return Classifier(backbone or tiny_cnn(), dim, k, {})


def state_round_trip(module: nn.Module, fresh: nn.Module, directory: Path) -> nn.Module:
    """Load ``module``'s state into ``fresh`` through a real riftune checkpoint file."""
    tensors, meta = ckpt.flatten_state({"regularizer": module.state_dict()})
    path = ckpt.save_checkpoint(directory, "step-1", tensors, meta)
    fresh.load_state_dict(ckpt.unflatten_state(*ckpt.load_checkpoint(path))["regularizer"])
    return fresh


def _batches(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 3, 8, 8, generator=gen),
            torch.randint(0, 3, (n,), generator=gen),
            torch.arange(n),
        )
        for n in sizes
    ]


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(9, 4))
    return z0 @ rng.normal(size=(4, 4)) + 0.5 * rng.normal(size=(9, 4)), z0
