"""The regularizer's own cost: forward and backward of the penalty alone, on one step's inputs.

Whole-step ratios swing ±20% from step to step on a shared machine; the penalty alone is the
part a regularizer adds for certain. :func:`penalty_cost` times it on the inputs of a real step
(:func:`step_inputs` builds them the way :class:`~riftune.engine.step.TrainStep` does), with the
backward stopped at the embeddings and feature maps: their copies are leaves, so the backbone
is not part of the time, while penalties on the weights themselves (L2-SP) still reach the
parameters as in training.
"""

from __future__ import annotations

import statistics
import time

import torch

from riftune.engine.step import TrainStep
from riftune.regularizers import Regularizer, StepInputs


def step_inputs(step: TrainStep, images: torch.Tensor, indices: torch.Tensor) -> StepInputs:
    """The :class:`StepInputs` that ``step`` hands its regularizer for this batch.

    Runs the teacher (if any) and the forward pass of ``step.forward_model`` as
    :meth:`TrainStep.__call__` does, without the loss, backward or update.

    Shape:
        images: (n, 3, H, W); indices: (n,), rows of ``step.reference_cache``.
    """
    device = step.ctx.device
    images = images.to(device)
    reference = teacher_maps = None
    if step.teacher is not None:
        reference, teacher_maps = step.teacher(images)
    elif step.reference_cache is not None:
        reference = step.reference_cache[indices.to(device)]
    output = step.forward_model(images)
    maps = (
        step.teacher.student_tap.pop()
        if step.teacher is not None and step.teacher.student_tap
        else None
    )
    return StepInputs(
        embeddings=output.embeddings,
        reference=reference,
        feature_maps=maps,
        reference_feature_maps=teacher_maps,
        model=step.model,
    )


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().requires_grad_(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def penalty_cost(
    regularizer: Regularizer, inputs: StepInputs, rounds: int = 20, warmup: int = 2
) -> float:
    """Median seconds of one ``regularizer.penalty(inputs).backward()``.

    The embeddings and finetuned feature maps are replaced by detached leaf copies (gradient
    stops there); the reference tensors are passed as they are. Gradients are cleared before
    each call, outside the timed span.

    Args:
        regularizer: a prepared regularizer, on the inputs' device.
        inputs: one step's inputs, e.g. from :func:`step_inputs`.
        rounds: timed calls (the median is returned).
        warmup: untimed calls first.

    Raises:
        ValueError: ``rounds`` < 1 or ``warmup`` < 0.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"penalty_cost needs rounds >= 1 and warmup >= 0; got {rounds}, {warmup}")
    leaves = StepInputs(
        embeddings=_leaf(inputs.embeddings),
        reference=inputs.reference,
        feature_maps=None
        if inputs.feature_maps is None
        else [_leaf(m) for m in inputs.feature_maps],
        reference_feature_maps=inputs.reference_feature_maps,
        model=inputs.model,
    )
    cleared = [leaves.embeddings, *(leaves.feature_maps or []), *regularizer.parameters()]
    if inputs.model is not None:
        cleared += list(inputs.model.parameters())
    device = leaves.embeddings.device
    times = []
    for call in range(warmup + rounds):
        for tensor in cleared:
            tensor.grad = None
        _sync(device)
        start = time.perf_counter()
        penalty = regularizer.penalty(leaves)
        if penalty.requires_grad:  # ``none``'s constant zero has no backward
            penalty.backward()
        _sync(device)
        if call >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
