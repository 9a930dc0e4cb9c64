"""Shared fixtures: where the real MedMNIST files are, and a quiet, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    configured = os.environ.get("RIFTUNE_DATA")
    return Path(configured) if configured else REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """The folder with the official MedMNIST files (``$RIFTUNE_DATA`` or ../shared/data/medmnist).

    Fails, rather than skips, when the files are missing: the tests are meant to run on them.
    """
    path = _data_dir()
    if not (path / "breastmnist.npz").is_file():
        pytest.fail(f"MedMNIST files not found in {path}; set RIFTUNE_DATA to their folder")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
