"""One training step, shared by ``riftune finetune`` and ``riftune bench``.

    loss = task_loss(head(z), y) + λ * regularizer.penalty(z, reference, ...)

with the task loss cross-entropy (per-label binary cross-entropy for multi-label data), λ read
from the step's weight schedule (:mod:`riftune.engine.weight`: fixed, or a similarity budget
that the step updates with each step's penalty), z the finetuned embeddings of the batch and
``reference`` the pretrained embeddings of the same images, read from the per-sample cache or
computed by a frozen teacher pass, only when the regularizer asks for them. A regularizer that
acts through the optimizer alone (``has_penalty`` False, SPD) has no λ here: loss = task.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from riftune.distributed import DistributedContext
from riftune.engine.ddp import mean_over_ranks
from riftune.engine.losses import task_loss
from riftune.engine.weight import LossWeight
from riftune.models.classifier import Classifier
from riftune.models.feature_maps import FeatureMapTap
from riftune.models.modes import eval_mode
from riftune.regularizers import Regularizer, StepInputs
from riftune.tuning.base import BackboneWeights, plain_backbone_weights


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops, keeping its checkpoints and best model.

    Raised by the training loop when it reads a step's losses back (:mod:`.step_log`), not by
    the step itself, which never waits for the device."""


class Teacher:
    """Pretrained embeddings (and feature maps) of a batch, computed per step without gradient.

    Methods that can switch their changes off (LoRA, adapters, prompts, a frozen backbone) give
    ``pretrained_forward``, a context manager under which the trained backbone computes the
    pretrained function: no second copy of the weights. Otherwise a frozen copy of the
    pretrained backbone is kept (full finetuning, BitFit, LP-FT).
    """

    def __init__(
        self,
        model: Classifier,
        pretrained_forward: Callable[[], contextlib.AbstractContextManager] | None,
        feature_layers: list[str] | None = None,
    ):
        self.model = model
        self.pretrained_forward = pretrained_forward
        self.copy = (
            None
            if pretrained_forward is not None
            else copy.deepcopy(model.backbone).eval().requires_grad_(False)
        )
        self.student_tap = FeatureMapTap(model.backbone, feature_layers) if feature_layers else None
        self.teacher_tap = (
            FeatureMapTap(self.copy, feature_layers)
            if feature_layers and self.copy is not None
            else None
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if self.copy is not None:
            embeddings = self.copy(images)
            return embeddings, self.teacher_tap.pop() if self.teacher_tap else None
        with eval_mode(self.model.backbone), self.pretrained_forward():
            embeddings = self.model.backbone(images)
            maps = self.student_tap.pop() if self.student_tap else None
        return embeddings, maps


class TrainStep:
    """Forward, loss, backward and optimizer update for one batch.

    Args:
        model: the classifier (unwrapped); ``forward_model`` is what the forward pass calls
            (the DDP wrapper under torchrun, else ``model``).
        regularizer: its ``reference`` attribute picks cache, teacher or nothing.
        weight: λ's schedule, the only owner of λ (read before each step, updated after it
            with the global batch's penalty); None for a regularizer with no penalty to weigh
            (``has_penalty`` False).
        reference_cache: pretrained embeddings of the training split in dataset order,
            on the device. Shape: (N, d).
        teacher: per-batch pretrained pass, when the regularizer needs one.
        multilabel: per-label binary cross-entropy instead of cross-entropy.
        class_weights: the task loss's class (or positive-label) weights, or None.
        backbone_weights: the finetuning method's hook that reads the backbone's effective
            weights (L2-SP), see :meth:`~riftune.tuning.base.FinetuningMethod.backbone_weights`.
        micro_batches: k, the equal contiguous micro-batches this process cuts its batch into.
            The loss is the mean of their losses, and each one's gradient (of loss_j / k) is
            added to the parameters' in order; under DDP only the last one is reduced. With k·W
            fixed (W processes), every process count adds the same micro-batch gradients in the
            same order: (g₀/2 + g₁/2) for 1 process with k = 2 and for 2 processes with k = 1
            (halving is exact in floating point).
    """

    def __init__(
        self,
        model: Classifier,
        regularizer: Regularizer,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        ctx: DistributedContext,
        weight: LossWeight | None,
        grad_clip: float,
        amp_dtype: torch.dtype | None,
        reference_cache: torch.Tensor | None = None,
        teacher: Teacher | None = None,
        multilabel: bool = False,
        class_weights: torch.Tensor | None = None,
        backbone_weights: BackboneWeights = plain_backbone_weights,
        micro_batches: int = 1,
    ):
        self.model = model
        self.micro_batches = micro_batches
        self.forward_model: nn.Module = model
        self.regularizer = regularizer
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.ctx = ctx
        self.weight = weight
        self.grad_clip = grad_clip
        self.amp_dtype = amp_dtype
        self.reference_cache = reference_cache
        self.teacher = teacher
        self.multilabel = multilabel
        self.class_weights = class_weights
        self.backbone_weights = backbone_weights
        self._parameters = [p for g in optimizer.param_groups for p in g["params"]]

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the step and update λ's schedule; returns the losses ``loss``, ``task``, ``reg``
        of the global batch (under torchrun the mean over ranks, equal on every rank).

        The step never waits for the device: the losses come back as scalar tensors where
        training runs, λ's dual ascent stays there too, and a non-finite loss is found when the
        loop reads the losses back (:class:`~riftune.engine.step_log.StepLog`), which stops the
        run before any checkpoint holds the diverged weights.
        """
        device = self.ctx.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        parts = list(
            zip(
                images.chunk(self.micro_batches),
                labels.chunk(self.micro_batches),
                indices.chunk(self.micro_batches),
                strict=True,
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        sums = None
        for number, (part_images, part_labels, part_indices) in enumerate(parts):
            last = number == len(parts) - 1
            with self._gradient_sync(last):
                losses = self._losses(part_images, part_labels, part_indices)
                self.scaler.scale(losses["loss"] / len(parts)).backward()
            detached = {k: v.detach() for k, v in losses.items()}
            sums = detached if sums is None else {k: sums[k] + v for k, v in detached.items()}
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        losses = mean_over_ranks({k: v / len(parts) for k, v in sums.items()}, self.ctx)
        if self.weight is not None:
            self.weight.update(losses["reg"])
        return losses

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP reduces gradients on the last micro-batch only; before it, they accumulate."""
        if last or not hasattr(self.forward_model, "no_sync"):
            return contextlib.nullcontext()
        return self.forward_model.no_sync()

    def _losses(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The losses ``loss`` = ``task`` + λ·``reg`` of one (micro-)batch, with graph."""
        device = self.ctx.device
        with torch.autocast(
            device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            reference = teacher_maps = None
            if self.teacher is not None:
                reference, teacher_maps = self.teacher(images)
            elif self.reference_cache is not None:
                reference = self.reference_cache[indices.to(device, non_blocking=True)]
            output = self.forward_model(images)
            maps = (
                self.teacher.student_tap.pop()
                if self.teacher is not None and self.teacher.student_tap
                else None
            )
            task = task_loss(output.logits.float(), labels, self.multilabel, self.class_weights)
            reg_loss = self.regularizer.penalty(
                StepInputs(
                    embeddings=output.embeddings,
                    reference=reference,
                    feature_maps=maps,
                    reference_feature_maps=teacher_maps,
                    model=self.model,
                    backbone_weights=self.backbone_weights,
                )
            ).float()
        if self.weight is None:
            return {"loss": task, "task": task, "reg": reg_loss}
        lam = self.weight.value  # a float, or a float64 tensor on the device under a budget
        if isinstance(lam, torch.Tensor):
            lam = lam.to(reg_loss.dtype)  # rounds as a float multiplier would
        loss = task + lam * reg_loss
        return {"loss": loss, "task": task, "reg": reg_loss}
