"""The protocol every finetuning method follows, and the registry that finds one by name.

A finetuning method decides *which* parameters of a
:class:`~riftune.models.classifier.Classifier` learn, and may add new ones (LoRA matrices,
prompt tokens, adapters). Every method composes with every regularizer: regularizers only see
embeddings and parameters, and weights through :meth:`FinetuningMethod.backbone_weights`.

How the training engine uses a method (``model`` is always the ``Classifier`` itself, never its
DDP wrapper)::

    method = tuning.get(name).from_options(options)       # options: its Options dataclass
    method.apply(model)                                    # once, before DDP wrapping
    optimizer = AdamW(method.param_groups(model, backbone_lr, head_lr), ...)
    reg.prepare(PretrainedView(model, ..., backbone_weights=method.backbone_weights))
    for epoch in range(start_epoch, epochs):               # also right after a resume
        model.train()
        method.configure(model, epoch, epochs)             # requires_grad + frozen parts' modes
        # re-wrap DDP when method.phase(epoch, epochs) differs from the last epoch's phase
        reg.penalty(StepInputs(z, ..., model=model, backbone_weights=method.backbone_weights))
    teacher = method.pretrained_forward(model)             # None: keep a frozen copy instead
    with torch.no_grad(), teacher:                         # when not None
        z_pre = model.backbone(images)
    state = method.merged_backbone_state(model)            # WiSE-FT: plain-architecture weights

Contract of each step:

- :meth:`~FinetuningMethod.apply` inserts adapters or prompts (in place, on the backbone's
  device); methods that add nothing leave the model as it is.
- :meth:`~FinetuningMethod.configure` sets ``requires_grad`` of every parameter for this epoch's
  phase and puts frozen parts back in eval mode after the engine's ``model.train()``. Epochs
  count from 0. Rule for BatchNorm: only methods that train the backbone's weights (``full``
  and LP-FT's second phase) let BatchNorm update its running statistics; every other method
  keeps the backbone's BatchNorm layers in eval mode, so their statistics stay pretrained and
  switching the method's changes off (:meth:`~FinetuningMethod.pretrained_forward`) gives back
  the pretrained function exactly. ``linear`` (and LP-FT's probe phase) put the whole backbone
  in eval mode (no dropout or drop-path in a frozen feature extractor).
- :meth:`~FinetuningMethod.phase` names the set of trainable parameters an epoch uses. The set
  (and the modes) only change when the phase does, so the engine re-wraps DDP only then.
- :meth:`~FinetuningMethod.param_groups` lists every parameter that is trainable in *any*
  phase, so one optimizer serves the whole run (a frozen parameter has no gradient, and AdamW
  skips it). Groups, each a dict with ``name``, ``params`` and ``lr`` (empty ones left out):
  ``backbone`` (pretrained backbone weights, ``backbone_lr``), ``new`` (parameters the method
  added: LoRA matrices, prompts, adapters, ``head_lr``, because like the head they start
  from scratch and the PEFT papers train them at rates far above full finetuning's) and
  ``head`` (``head_lr``). Weight decay is left to the optimizer's default.
- :meth:`~FinetuningMethod.pretrained_forward` returns a context manager inside which
  ``model.backbone`` computes the pretrained backbone's function (and is in eval mode), or
  ``None`` when the method cannot switch its changes off (``full``, ``bitfit``, ``lp-ft``).
  Gradients are the caller's business (use ``torch.no_grad()``).
- :meth:`~FinetuningMethod.backbone_weights` lists the plain architecture's backbone weights
  as the adapted backbone computes them (:class:`BackboneWeight`: LoRA's as W₀ + ΔW), under
  the plain architecture's names. It is what a regularizer that anchors weights (L2-SP) is
  handed, through ``PretrainedView.backbone_weights`` and ``StepInputs.backbone_weights``,
  so no regularizer inspects a method's internals.
- :meth:`~FinetuningMethod.merged_backbone_state` returns the finetuned backbone's weights
  under the plain architecture's keys (LoRA merged), copies detached from the model, so WiSE-FT
  can interpolate them with the pretrained weights; methods that add parameters the pretrained
  architecture lacks (``vpt``, ``adaptformer``) raise :class:`~riftune.errors.UserError`.

A new method is one new file: subclass :class:`FinetuningMethod`, declare its ``Options``, decorate it with
:func:`register`, and import the module in ``riftune/tuning/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from riftune.models.classifier import Classifier
from riftune.models.modes import eval_mode  # noqa: F401  (re-exported for the methods)
from riftune.options import NoOptions, Section
from riftune.registry import Registry

FrozenMode = Literal["none", "batchnorm", "backbone"]
"""Which parts of the backbone :meth:`FinetuningMethod.configure` puts in eval mode."""

HEAD_PREFIX = "head."


@dataclass(frozen=True)
class BackboneWeight:
    """One weight of the plain backbone architecture, as the adapted backbone computes it.

    Attributes:
        name: its name in the plain architecture, which is also its key in a snapshot of the
            backbone taken before the method changed it (``blocks.0.conv_pw.weight``).
        parameter: the parameter that stores it (under LoRA, the frozen base weight W₀).
        delta: ``None`` when the weight is ``parameter`` itself; else returns the update ΔW
            the forward pass adds to ``parameter`` right now, differentiable in the method's
            own parameters (``None`` while there is none: adapters merged or disabled).
    """

    name: str
    parameter: nn.Parameter
    delta: Callable[[], torch.Tensor | None] | None = None

    def value(self) -> torch.Tensor:
        """The weight the forward pass uses now: ``parameter``, or W₀ + ΔW in float32.

        Shape:
            That of ``parameter``.
        """
        update = None if self.delta is None else self.delta()
        return self.parameter if update is None else self.parameter.float() + update.float()


BackboneWeights = Callable[[Classifier], list[BackboneWeight]]
"""What a regularizer is handed to read a model's backbone weights (a method's hook)."""


def plain_backbone_weights(model: Classifier) -> list[BackboneWeight]:
    """Every backbone parameter as it is, under its own name: a method that adds no update."""
    return [BackboneWeight(name, param) for name, param in model.backbone.named_parameters()]


class FinetuningMethod:
    """Base class: which parameters of a ``Classifier`` learn, and what is added to it.

    Parameter names below are those of ``model.named_parameters()`` on the ``Classifier``
    (``head.weight``, ``backbone.blocks.0.attn.qkv.weight``, ...).

    Class attributes a subclass sets:
        name: the registry name used by ``--method``.
        phases: the phases a run goes through, in order (most methods have one).
        changes_embeddings: whether training can change the backbone's embeddings at all
            (``False`` for ``linear``: a regularizer of the representation then has nothing
            to act on).
    """

    name: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("train",)
    changes_embeddings: ClassVar[bool] = True

    Options: ClassVar[type[Section]] = NoOptions
    """This method's options: a :class:`~riftune.options.Section` dataclass whose fields become
    its flags and its part of config.yaml."""

    @classmethod
    def from_options(cls, options: Section) -> FinetuningMethod:
        """Build an instance from its checked options."""
        return cls(**options.to_dict())

    # ------------------------------------------------------------------ what subclasses define
    def is_trainable(self, name: str, phase: str) -> bool:
        """Whether the parameter called ``name`` learns during ``phase``."""
        raise NotImplementedError

    def is_new(self, name: str) -> bool:
        """Whether ``name`` is a parameter :meth:`apply` added (it goes in the ``new`` group)."""
        return False

    def frozen_mode(self, phase: str) -> FrozenMode:
        """What :meth:`configure` puts in eval mode during ``phase`` (see the module docs)."""
        return "batchnorm"

    def apply(self, model: Classifier) -> None:
        """Insert adapters or prompts into ``model.backbone``; called once, before DDP."""

    def phase(self, epoch: int, epochs: int) -> str:
        """The phase of 0-based ``epoch`` in a run of ``epochs`` epochs."""
        return self.phases[0]

    def pretrained_forward(self, model: Classifier) -> AbstractContextManager[None] | None:
        """A context in which ``model.backbone`` is the pretrained backbone, or ``None``."""
        return None

    # ------------------------------------------------------------------------ shared behaviour
    def configure(
        self, model: Classifier, epoch: int, epochs: int, freeze_bn: bool = False
    ) -> None:
        """Set ``requires_grad`` and frozen parts' eval mode for ``epoch`` (after ``model.train()``).

        ``freeze_bn`` (``--freeze-bn``) keeps BatchNorm in eval mode even in a phase that trains
        the backbone's weights.
        """
        phase = self.phase(epoch, epochs)
        for name, param in model.named_parameters():
            param.requires_grad_(self.is_trainable(name, phase))
        mode = self.frozen_mode(phase)
        if freeze_bn and mode == "none":
            mode = "batchnorm"
        if mode == "backbone":
            model.backbone.eval()
        elif mode == "batchnorm":
            for module in model.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def param_groups(
        self, model: Classifier, backbone_lr: float, head_lr: float
    ) -> list[dict[str, object]]:
        """AdamW parameter groups of every parameter trainable in any phase (module docs)."""
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "new": [], "head": []}
        for name, param in model.named_parameters():
            if not any(self.is_trainable(name, phase) for phase in self.phases):
                continue
            if name.startswith(HEAD_PREFIX):
                groups["head"].append(param)
            elif self.is_new(name):
                groups["new"].append(param)
            else:
                groups["backbone"].append(param)
        lrs = {"backbone": backbone_lr, "new": head_lr, "head": head_lr}
        return [
            {"name": group, "params": params, "lr": lrs[group]}
            for group, params in groups.items()
            if params
        ]

    def backbone_weights(self, model: Classifier) -> list[BackboneWeight]:
        """The backbone's weights as the forward pass uses them, in ``named_parameters`` order.

        By default every backbone parameter as it is (prompts and adapters included, under
        their own names); methods that add an update to a pretrained weight (LoRA) return that
        weight with its update and leave out the update's own factors.
        """
        return plain_backbone_weights(model)

    def merged_backbone_state(self, model: Classifier) -> dict[str, torch.Tensor]:
        """The backbone's weights and buffers under the plain architecture's keys (copies).

        Integer buffers (BatchNorm's ``num_batches_tracked``) are included as they are; an
        interpolation should copy rather than blend them.
        """
        return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


METHODS: Registry[type[FinetuningMethod]] = Registry("finetuning method")


def register(cls: type[FinetuningMethod]) -> type[FinetuningMethod]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    return METHODS.register(cls)


def available() -> list[str]:
    """Registered method names, sorted."""
    return METHODS.available()


def get(name: str) -> type[FinetuningMethod]:
    """The method class registered as ``name``; ValueError listing the valid names."""
    return METHODS.get(name)


def is_head(name: str) -> bool:
    """Whether ``name`` is a parameter of the classifier head."""
    return name.startswith(HEAD_PREFIX)
