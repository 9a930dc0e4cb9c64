"""The protocol every regularizer follows, and the registry that finds one by name.

A regularizer is an ``nn.Module`` that the training engine prepares once, before training,
from the pretrained model, and then calls once per step:

    total_loss = task_loss + lam * regularizer.penalty(step)

What it needs from the engine it declares through class attributes, so the engine does only
the work a regularizer asks for (no frozen teacher pass unless ``reference == "teacher"``).
A new regularizer is one new file: subclass :class:`Regularizer`, declare its ``Options``
(flags and config.yaml follow from them), decorate it with :func:`register`, and import the
module in ``riftune/regularizers/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from riftune.errors import UserError
from riftune.options import NoOptions, Section
from riftune.registry import Registry
from riftune.tuning.base import BackboneWeights, plain_backbone_weights

ReferenceSource = Literal["cache", "teacher"]


@dataclass
class PretrainedView:
    """What the engine hands :meth:`Regularizer.prepare`, computed once before training.

    Attributes:
        model: the classifier with its pretrained backbone (before any update), unwrapped
            from DDP. Regularizers that anchor weights (L2-SP) snapshot it here.
        train_embeddings: pretrained embeddings of the whole training split in dataset
            order, eval mode, no augmentation. Shape: (N, d). Under torch.distributed every
            rank holds the full tensor. The per-sample cache is this tensor.
        train_labels: class index of each training image, same order. Shape: (N,).
        train_batches: returns a fresh iterable of this rank's ``(images, labels, indices)``
            training batches, without augmentation (for regularizers that need images, e.g.
            DELTA's channel attention).
        backbone_weights: the finetuning method's
            :meth:`~riftune.tuning.base.FinetuningMethod.backbone_weights`: a model's backbone
            weights as its forward pass uses them, under the plain architecture's names
            (LoRA: W₀ + ΔW). The default reads every parameter as it is.
    """

    model: nn.Module
    train_embeddings: torch.Tensor
    train_labels: torch.Tensor | None = None
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, ...]]] | None = None
    backbone_weights: BackboneWeights = plain_backbone_weights


@dataclass
class StepInputs:
    """What the engine hands :meth:`Regularizer.penalty` on every training step.

    Attributes:
        embeddings: finetuned embeddings of the local batch, with gradient. Shape: (n, d).
        reference: pretrained embeddings of the same n samples, without gradient, from the
            per-sample cache or a frozen teacher pass (``Regularizer.reference``); ``None``
            when the regularizer asked for none. Shape: (n, d).
        feature_maps: intermediate feature maps of the finetuned backbone, when
            ``Regularizer.needs_feature_maps``; each (n, c_l, h_l, w_l).
        reference_feature_maps: the teacher's maps at the same layers, without gradient.
        model: the classifier being trained, unwrapped from DDP.
        backbone_weights: as in :class:`PretrainedView`, the method's hook that reads
            ``model``'s backbone weights.
    """

    embeddings: torch.Tensor
    reference: torch.Tensor | None = None
    feature_maps: list[torch.Tensor] | None = None
    reference_feature_maps: list[torch.Tensor] | None = None
    model: nn.Module | None = None
    backbone_weights: BackboneWeights = plain_backbone_weights


class Regularizer(nn.Module):
    """Base class: a penalty on how far finetuning moves away from the pretrained model.

    Class attributes a subclass sets:
        name: the registry name used by ``--reg``.
        reference: ``None`` when no per-sample pretrained embeddings are needed, else the
            default source, ``"cache"`` or ``"teacher"``; an instance may override it.
        needs_feature_maps: whether :class:`StepInputs` must carry intermediate maps
            (and, with a teacher, the teacher's maps).
        min_batch_size: the smallest global batch the penalty is defined on (e.g. 2 for a
            covariance); the engine refuses a smaller ``--batch-size`` before training.
        default_lam: the weight λ that ``--lam`` defaults to with this regularizer.
        default_similarity: a similarity budget (``--target-similarity``) that replaces the
            fixed weight when neither ``--lam`` nor a budget is given, or None
            (:meth:`default_budget_similarity` may depend on the options).
        penalizes_features_only: whether the penalty depends on nothing but the backbone's
            outputs (embeddings or feature maps), so it is constant when a method cannot
            change them (``linear``); the engine then refuses the combination.
        has_penalty: ``False`` for a regularizer that acts through the optimizer alone (its
            penalty is 0, so the train step weighs none and a similarity budget has nothing
            to bound).
        splits_over_micro_batches: whether the penalty is a mean of per-sample terms or a
            function of the parameters alone, so the mean of its values on equal micro-batches
            is its value on the batch (``--micro-batches``); ``False`` for batch statistics.
        optimizer: ``"adamw"``, or ``"spd"``: the engine steps with
            :class:`~riftune.optim.spd.SPDAdamW` of strength λ (Selective Projection Decay),
            or ``"ftp"``: with :class:`~riftune.optim.ftp.FTPAdamW` of strength κ = λ (Fast
            Trainable Projection).

    Instance attributes:
        param_lr: the learning rate the engine gives the regularizer's own parameters (RIFT's
            learned Q); ``None``: the head's (``--head-lr``).
        feature_layers: when :attr:`needs_feature_maps`, the backbone module names whose
            outputs :class:`StepInputs` carries in ``feature_maps`` (and, from the teacher, in
            ``reference_feature_maps``), in this order; set at the latest by :meth:`prepare`,
            since the engine taps them after it. Empty (the default) otherwise.
    """

    name: ClassVar[str] = ""
    reference: ReferenceSource | None = None
    needs_feature_maps: ClassVar[bool] = False
    min_batch_size: ClassVar[int] = 1
    default_lam: ClassVar[float] = 1.0
    default_similarity: ClassVar[float | None] = None
    penalizes_features_only: ClassVar[bool] = False
    has_penalty: ClassVar[bool] = True
    splits_over_micro_batches: ClassVar[bool] = False
    optimizer: ClassVar[Literal["adamw", "spd", "ftp"]] = "adamw"
    param_lr: float | None = None
    feature_layers: Sequence[str] = ()

    Options: ClassVar[type[Section]] = NoOptions
    """This regularizer's options: a :class:`~riftune.options.Section` dataclass whose fields
    become its flags (``--NAME-FIELD``) and its part of config.yaml."""

    @classmethod
    def default_budget_similarity(cls, options: Section) -> float | None:
        """The similarity to keep when neither ``--lam`` nor a budget is given (None: weigh
        the penalty by :attr:`default_lam`)."""
        return cls.default_similarity

    @classmethod
    def budget_for_similarity(cls, similarity: float, options: Section) -> float:
        """ε such that ``penalty <= ε`` means a similarity to the pretrained representation of at
        least ``similarity`` s ∈ [0, 1] (``--target-similarity``).

        Raises:
            UserError: the penalty is no similarity of fixed scale (this base's answer).
        """
        raise UserError(
            f"--target-similarity needs a penalty that is a similarity of fixed scale; --reg "
            f"{cls.name}'s is not: give --budget directly"
        )

    @classmethod
    def from_options(cls, options: Section, dim: int) -> Regularizer:
        """Build an instance from its checked options; ``dim`` is the embedding size d."""
        return cls(**options.to_dict())

    def prepare(self, pretrained: PretrainedView) -> None:
        """Called once before training, e.g. to fit reference statistics."""

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """The scalar penalty for one step (before multiplication by lambda)."""
        raise NotImplementedError


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


def register(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: make ``cls`` available as ``--reg cls.name``."""
    return REGULARIZERS.register(cls)


def available() -> list[str]:
    """Registered regularizer names, sorted, ``none`` included."""
    return REGULARIZERS.available()


def get(name: str) -> type[Regularizer]:
    """The regularizer class registered as ``name``; ValueError listing the valid names."""
    return REGULARIZERS.get(name)


@register
class NoRegularizer(Regularizer):
    """Plain finetuning: a zero penalty (kept so every run has the same code path)."""

    name = "none"
    splits_over_micro_batches = True

    def penalty(self, step: StepInputs) -> torch.Tensor:
        return step.embeddings.new_zeros(())
