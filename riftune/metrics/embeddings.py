"""Embeddings (and logits) of a model over a whole data loader, in eval mode, without gradients.

Used for the pretrained reference statistics, for CKA between pretrained and finetuned
embeddings, and for every metric computed on a whole split. Under ``torch.distributed`` each
rank runs its shard and the results are gathered, so every rank returns the whole split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from riftune.distributed import all_gather_rows
from riftune.models.modes import eval_mode

if TYPE_CHECKING:
    from riftune.models.classifier import Classifier


@dataclass
class Collected:
    """Per-sample outputs over a split, sorted by sample index, on the CPU.

    Attributes:
        embeddings: float32. Shape: (N, d).
        logits: float32, or ``None`` from :func:`collect_embeddings`. Shape: (N, k).
        labels: int64. Shape: (N,); (N, L) 0/1 targets for a multi-label task.
        indices: int64, strictly increasing (each sample once). Shape: (N,).
    """

    embeddings: torch.Tensor
    logits: torch.Tensor | None
    labels: torch.Tensor
    indices: torch.Tensor


def collect(
    model: Classifier,
    loader: Iterable,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
) -> Collected:
    """Embeddings and logits of ``model`` over ``loader``.

    The model runs in eval mode under ``torch.no_grad()``; afterwards every submodule is back
    in the train/eval mode it had. Results are sorted by sample index. Under an initialized
    ``torch.distributed`` process group each rank's results are gathered and duplicate indices
    (the padding a ``DistributedSampler`` adds) dropped, so every rank returns the full set;
    every rank must call this with a non-empty shard.

    Args:
        model: a :class:`~riftune.models.classifier.Classifier` (or anything whose output has
            ``logits`` and ``embeddings``), already on ``device``.
        loader: yields ``(images, labels, indices)`` batches.
        device: where the images are sent.
        amp_dtype: run the forward under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``); ``None`` runs in full precision. Outputs are stored as float32.

    Returns:
        The :class:`Collected` outputs.
    """

    def step(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(images)
        return out.embeddings, out.logits

    with eval_mode(model):
        return _run(step, loader, device, amp_dtype)


def collect_embeddings(
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
) -> Collected:
    """Like :func:`collect` for any callable mapping images (n, 3, H, W) to embeddings (n, d).

    When ``embed_fn`` is an ``nn.Module`` or a bound method of one (e.g. ``model.embed``) that
    module is put in eval mode for the duration and restored after; any other callable is run
    as it is. The result's ``logits`` is ``None``.
    """
    owner = embed_fn if isinstance(embed_fn, nn.Module) else getattr(embed_fn, "__self__", None)
    with eval_mode(owner if isinstance(owner, nn.Module) else None):
        return _run(lambda images: (embed_fn(images), None), loader, device, amp_dtype)


def _run(
    step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    loader: Iterable,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
) -> Collected:
    device = torch.device(device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    parts: dict[str, list[torch.Tensor]] = {
        "embeddings": [],
        "logits": [],
        "labels": [],
        "indices": [],
    }
    with torch.no_grad(), autocast:
        for batch in loader:
            if len(batch) != 3:
                raise ValueError(
                    f"the loader must yield (images, labels, indices) batches; got {len(batch)} items"
                )
            images, labels, indices = batch
            embeddings, logits = step(images.to(device, non_blocking=True))
            parts["embeddings"].append(embeddings.float().cpu())
            if logits is not None:
                parts["logits"].append(logits.float().cpu())
            parts["labels"].append(_label_rows(torch.as_tensor(labels)).long().cpu())
            parts["indices"].append(torch.as_tensor(indices).reshape(-1).long().cpu())
    if not parts["embeddings"]:
        raise ValueError("the loader yielded no batches; give collect a non-empty split")
    merged = {
        name: all_gather_rows(torch.cat(values)) if values else None
        for name, values in parts.items()
    }
    order = torch.argsort(merged["indices"], stable=True)
    sorted_indices = merged["indices"][order]
    first = torch.ones_like(sorted_indices, dtype=torch.bool)
    first[1:] = sorted_indices[1:] != sorted_indices[:-1]
    keep = order[first]
    return Collected(
        embeddings=merged["embeddings"][keep],
        logits=None if merged["logits"] is None else merged["logits"][keep],
        labels=merged["labels"][keep],
        indices=merged["indices"][keep],
    )


def _label_rows(labels: torch.Tensor) -> torch.Tensor:
    """A batch's labels as (B,) class indices, or as (B, L) multi-label targets (L ≥ 2)."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels
    return labels.reshape(-1)
