"""Faster paths for training and evaluation that leave the results as they are.

- :func:`to_channels_last`: the model's 4-D weights (and :func:`channels_last_input`, a batch)
  in NHWC memory order, which oneDNN's CPU convolutions and cuDNN's tensor cores run fastest.
  The values are the same; only the order of the sums inside a convolution changes, so
  outputs agree with the NCHW ones to float32 rounding (tested to 1e-5 relative on
  EfficientNet-Lite0), and so do gradients with frozen BatchNorm; :func:`use_channels_last`
  decides when ``riftune finetune`` trains so (``--channels-last``, on by default).
- :func:`channels_last_meanwhile`: the same, for the duration of a block (DELTA's
  ablations), then back.
- :func:`use_compile` and :func:`compiled_training_forward`: ``--compile``, ``torch.compile`` of
  the training step's forward pass (a wrapper: the model, its state dict and the evaluation
  passes stay uncompiled).
- :func:`thread_report`: the intra- and inter-op thread counts against the CPUs this process
  may use, for ``metrics.json`` (a run with more threads than CPUs is slower, not faster).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

ChannelsLast = Literal["auto", "on", "off"]
CompileChoice = Literal["auto", "on", "off"]

#: the device types where compiling the training forward was measured faster than eager for
#: the default recipe (BENCHMARKS.md, "The compiled step"): none yet. On this project's 2-core
#: CPU it was slower; on a GPU it is unmeasured (benchmarks/gpu.sh measures it).
COMPILE_MEASURED_FASTER: frozenset[str] = frozenset()


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer of ``model`` channels last, in place.

    Parameters keep their identity (optimizers and hooks that hold them stay valid).

    Returns:
        ``model``.
    """
    return model.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def channels_last_meanwhile(model: nn.Module) -> Iterator[nn.Module]:
    """``model``'s 4-D parameters and buffers channels last inside the block, as before after.

    For inference-only passes over a model that trains in NCHW (train-mode BatchNorm): the
    values never change, only their memory order. A model with no 4-D tensors, or with any
    of them not in NCHW order already, is left as it is.
    """
    four_d = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.ndim == 4]
    if not four_d or not all(t.is_contiguous() for t in four_d):
        yield model
        return
    to_channels_last(model)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def trains_batchnorm(model: nn.Module, freeze_bn: bool) -> bool:
    """Whether some BatchNorm layer of ``model`` runs in train mode (batch statistics) while
    training: the model has one and ``--no-freeze-bn`` was given."""
    return not freeze_bn and any(isinstance(m, _BatchNorm) for m in model.modules())


def use_channels_last(mode: ChannelsLast, model: nn.Module, freeze_bn: bool) -> bool:
    """``--channels-last`` resolved: ``auto`` is on unless BatchNorm trains.

    With frozen (eval mode) BatchNorm, the default, channels-last weight gradients are as
    close to float64 as the NCHW ones (within 1e-3 relative on EfficientNet-Lite0, 28 px);
    through train-mode BatchNorm the CPU's channels-last backward is not (over 1e-3 where
    NCHW is within it: the strict xfail in ``tests/models/test_speed.py``).
    """
    if mode == "auto":
        return not trains_batchnorm(model, freeze_bn)
    return mode == "on"


def channels_last_input(images: torch.Tensor) -> torch.Tensor:
    """``images`` in channels-last memory order (same shape and values); other ranks as given.

    Shape:
        images: (n, 3, H, W) or any tensor; returned with the same shape.
    """
    if images.ndim != 4:
        return images
    return images.contiguous(memory_format=torch.channels_last)


def use_compile(choice: CompileChoice, device: torch.device) -> bool:
    """``--compile`` resolved: ``auto`` is on only on the device types in
    :data:`COMPILE_MEASURED_FASTER`."""
    if choice == "auto":
        return device.type in COMPILE_MEASURED_FASTER
    return choice == "on"


def compiled_training_forward(
    module: nn.Module, device: torch.device, micro_batches: int = 1
) -> nn.Module:
    """``torch.compile(module)`` for the training step's forward and backward.

    A wrapper that shares ``module``'s parameters: checkpoints, layer names and evaluation keep
    using ``module`` itself. On CUDA with one micro-batch a step the mode is ``reduce-overhead``
    (CUDA graphs: training batches have one static shape, ``drop_last``); elsewhere, and with
    several micro-batches (whose gradients a graph's replay would overwrite before they are
    added, PyTorch issue 169545), the default (inductor). The first step compiles, which takes
    tens of seconds on a CPU (inductor needs a C++ compiler); a change of trainable parameters
    (LP-FT's second stage) compiles again.
    """
    graphs = device.type == "cuda" and micro_batches == 1
    return torch.compile(module, mode="reduce-overhead" if graphs else None)


def thread_report() -> dict[str, int]:
    """``torch_threads`` and ``interop_threads`` (PyTorch's pools) and ``usable_cpus`` (the
    CPUs in this process's affinity mask, which ``OMP_NUM_THREADS`` does not change)."""
    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "usable_cpus": len(os.sched_getaffinity(0)),
    }
