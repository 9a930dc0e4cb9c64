"""Capture and restore every random number generator a training run draws from.

The captured state is a nested dict of tensors, NumPy arrays, tuples and numbers, so it goes
through :func:`riftune.runs.checkpoint_file.flatten_state` into a checkpoint and comes back exactly.
States are per process: under torch.distributed each rank captures its own.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The current state of Python's ``random``, NumPy's global RNG, torch (CPU and CUDA).

    Args:
        generators: Extra ``torch.Generator`` objects (e.g. a sampler's or a data loader's),
            by name; each is captured under ``"generators"``.

    Returns:
        ``{"python": random.getstate(), "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(), "cuda": [state per CUDA device] (empty without CUDA),
        "generators": {name: generator.get_state()}}``.
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),  # noqa: NPY002 (the global RNG is the point)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Put every generator back into the state :func:`capture_rng_state` returned.

    Args:
        state: A captured state, possibly after a round trip through a checkpoint.
        generators: The generators to restore, by the names they were captured under.

    Raises:
        ValueError: The state lacks one of the named generators.

    Warns:
        RuntimeWarning: The state holds CUDA states for a different number of devices than this
            process sees; they are left as they are (the run cannot be reproduced exactly).
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda = list(state["cuda"])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and len(cuda) == visible:
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        warnings.warn(
            f"CUDA RNG states not restored: saved for {len(cuda)} device(s), {visible} visible; "
            "random draws on the GPU will differ from the original run",
            RuntimeWarning,
            stacklevel=2,
        )
    saved = state["generators"]
    for name, generator in (generators or {}).items():
        if name not in saved:
            raise ValueError(
                f"no saved state for generator {name!r}; saved ones: {sorted(saved) or 'none'}"
            )
        generator.set_state(saved[name])
