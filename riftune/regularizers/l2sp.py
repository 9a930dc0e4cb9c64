r"""L2-SP: weight decay toward the pretrained starting point instead of toward zero.

Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018, https://arxiv.org/abs/1802.01483. The paper's penalty is
:math:`\tfrac{\alpha}{2}\lVert w_S - w_S^0\rVert_2^2 + \tfrac{\beta}{2}\lVert w_{\bar S}\rVert_2^2`
(w_S: the pretrained part, w_S^0 its starting point, w_S̄: the new layers). Here

.. math::

    \Omega(\theta) = \lVert\theta_b - \theta_b^0\rVert_2^2
        + r\,\big(\lVert\theta_h\rVert_2^2 + \lVert\theta_{new}\rVert_2^2\big),
    \qquad r = \beta/\alpha\ (\texttt{--l2sp-beta-ratio}),

so ``loss = task + λ·Ω`` is the paper's objective with α = 2λ and β = 2λr. The default r = 0.1
is the ratio of the values the paper recommends and DELTA (Li et al., ICLR 2019) reuses for it,
α = 0.1 and β = 0.01.

What is penalized:

- θ_b⁰: every floating-point backbone parameter, snapshotted in :meth:`L2SP.prepare` (the model
  before any update), stored as buffers so a checkpoint restores it. Each step sums over the
  backbone parameters that currently require a gradient (a frozen parameter has not moved, and
  methods such as LP-FT unfreeze the backbone later, so the snapshot covers all of it).
  The weights, and their names, come from the finetuning method
  (``PretrainedView.backbone_weights`` and ``StepInputs.backbone_weights``: the method's
  :meth:`~riftune.tuning.base.FinetuningMethod.backbone_weights`), under the plain
  architecture's names, so an adapted backbone matches its plain snapshot.
- An adapted weight (LoRA): the base weight stays frozen, so L2-SP applies to the *effective*
  weight the method reports, ‖W₀ + ΔW − θ⁰‖² (LoRA: ΔW = s·BA, a merged adapter already inside
  W₀; the factors A and B are not penalized on their own). This is the starting-point distance
  of the function actually computed; the method refuses DoRA, whose effective weight is not
  W₀ + ΔW.
- θ_h: every trainable head parameter (weight and bias), the paper's new layers.
- θ_new: trainable backbone parameters with no snapshot (added after :meth:`L2SP.prepare`),
  also new layers in the paper's sense. Prompts or adapters that already exist at
  :meth:`L2SP.prepare` are snapshotted there, i.e. anchored at their initial values.

Cost: which parameter goes in which term is worked out once per set of trainable parameters
and reused while that set stays the same; the sums over the ~150 parameter tensors of a
backbone run as a few fused ``torch._foreach_*`` kernels (:func:`squared_distance`) instead of
several kernels per tensor, which is what a launch-bound GPU step pays for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from riftune.options import Section, non_negative, option
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register
from riftune.tuning.base import BackboneWeight, BackboneWeights


class BufferDict(nn.Module):
    """Tensors by arbitrary name (dots allowed), kept as buffers: moved, saved and loaded.

    A key missing here but present in a loaded state dict is created, so a freshly built
    module can load the tensors that another one computed (resume from a checkpoint).
    """

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.register_buffer(key.replace(".", "/"), value)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._buffers[key.replace(".", "/")]

    def __contains__(self, key: str) -> bool:
        return key.replace(".", "/") in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for key, value in state_dict.items():
            name = key[len(prefix) :]
            if key.startswith(prefix) and "." not in name and name not in self._buffers:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _SquaredDistance(torch.autograd.Function):
    """Σᵢ ‖pᵢ − aᵢ‖² over lists of tensors, gradient 2(pᵢ − aᵢ): a few fused kernels in all."""

    @staticmethod
    def forward(ctx, count: int, *tensors: torch.Tensor) -> torch.Tensor:
        params, anchors = tensors[:count], tensors[count:]
        diffs = torch._foreach_sub(params, anchors) if anchors else params
        ctx.save_for_backward(*diffs)
        ctx.anchor_count = len(anchors)
        return torch.stack(torch._foreach_norm(diffs)).square().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = torch._foreach_mul(ctx.saved_tensors, 2 * grad)
        return (None, *grads, *([None] * ctx.anchor_count))


def squared_distance(
    params: list[torch.Tensor], anchors: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Σᵢ ‖pᵢ − aᵢ‖² (Σᵢ ‖pᵢ‖² without anchors) in float32, differentiable in the pᵢ.

    The same value and gradient as summing ``(p - a).square().sum()`` tensor by tensor, in a
    few ``torch._foreach_*`` kernels instead of several per tensor.

    Shape:
        - params: a non-empty list of tensors of any shapes; anchors: the same shapes.
        - output: scalar.
    """
    params = [p.float() for p in params]
    anchors = [a.float() for a in anchors] if anchors else []
    return _SquaredDistance.apply(len(params), *params, *anchors)


@dataclass
class _Terms:
    """The trainable parameters of a model sorted into the terms of Ω (module docstring).

    Attributes:
        anchored: backbone parameters with a snapshot, ‖θ − θ⁰‖², and their snapshots' keys.
        adapted: weights with an update (LoRA), ‖W₀ + ΔW − θ⁰‖² (ΔW read each step: adapters
            can be merged or disabled in between).
        new: head parameters and backbone parameters without a snapshot, ‖θ‖².
    """

    anchored: list[nn.Parameter]
    anchor_keys: list[str]
    adapted: list[BackboneWeight]
    new: list[nn.Parameter]


class StartingPointDistance(nn.Module):
    r"""L2-SP's penalty from the tensors of each term, engine-free.

    Li, Grandvalet & Davoine, ICML 2018 (https://arxiv.org/abs/1802.01483):

    .. math::
        Ω = \sum_i ‖w_i − w^0_i‖²_2 + r \sum_j ‖v_j‖²_2

    for the weights w_i with a starting point w⁰_i (constants) and the new weights v_j, summed
    in float32 with autocast off in a few fused kernels (:func:`squared_distance`); an empty
    term is 0.

    Args:
        beta_ratio: r ≥ 0, the weight of the plain L2 term.

    Shape:
        - weights, anchors: lists of tensors of equal shapes, pairwise; new: a list of tensors.
        - output: scalar, float32.
    """

    def __init__(self, beta_ratio: float = 0.1):
        super().__init__()
        if beta_ratio < 0:
            raise ValueError(f"--l2sp-beta-ratio must be >= 0; got {beta_ratio}")
        self.beta_ratio = beta_ratio

    def extra_repr(self) -> str:
        return f"beta_ratio={self.beta_ratio}"

    def forward(
        self,
        weights: list[torch.Tensor],
        anchors: list[torch.Tensor],
        new: list[torch.Tensor],
    ) -> torch.Tensor:
        if len(weights) != len(anchors):
            raise ValueError(f"{len(weights)} weights for {len(anchors)} starting points")
        tensors = [*weights, *new]
        device = tensors[0].device if tensors else torch.device("cpu")
        with torch.autocast(device_type=device.type, enabled=False):
            zero = torch.zeros((), dtype=torch.float32, device=device)
            sp = squared_distance(weights, anchors) if weights else zero
            plain = squared_distance(new) if new else zero
            return sp + self.beta_ratio * plain


@register
class L2SP(Regularizer):
    """``--reg l2sp``: ‖θ_b − θ_b⁰‖² + r·(‖θ_h‖² + ‖θ_new‖²); see the module docstring.

    Args:
        beta_ratio: r = β/α, the weight of the plain L2 term on new parameters.
    """

    name = "l2sp"
    splits_over_micro_batches = True

    def __init__(self, beta_ratio: float = 0.1):
        super().__init__()
        self.distance = StartingPointDistance(beta_ratio)
        self.anchor = BufferDict()
        # (which parameters and which of them train, their _Terms): rebuilt when either changes
        self._terms_cache: tuple[tuple, _Terms] | None = None
        self.register_load_state_dict_post_hook(_forget_terms)

    @dataclass
    class Options(Section):
        """``--l2sp-beta-ratio``."""

        flag_prefix: ClassVar[str] = "l2sp"
        beta_ratio: float = option(
            0.1,
            "l2sp: weight of the plain L2 on the head relative to the starting-point term, "
            "beta/alpha (0.1: the paper's alpha=0.1, beta=0.01)",
            check=non_negative,
        )

    def prepare(self, pretrained: PretrainedView) -> None:
        """Snapshot θ_b⁰: every floating-point backbone weight the method reports."""
        for weight in pretrained.backbone_weights(pretrained.model):
            if weight.parameter.is_floating_point():
                self.anchor[weight.name] = weight.parameter.detach().clone()
        _forget_terms(self)

    def _terms(self, model: nn.Module, weights_of: BackboneWeights) -> _Terms:
        """``model``'s parameters sorted into Ω's terms, reused while the trainable set stays."""
        signature = (weights_of, tuple((id(p), p.requires_grad) for p in model.parameters()))
        if self._terms_cache is None or self._terms_cache[0] != signature:
            self._terms_cache = (signature, self._sort_terms(model, weights_of))
        return self._terms_cache[1]

    def _sort_terms(self, model: nn.Module, weights_of: BackboneWeights) -> _Terms:
        terms = _Terms([], [], [], [p for p in model.head.parameters() if p.requires_grad])
        for weight in weights_of(model):
            if weight.delta is not None:
                if weight.name not in self.anchor:
                    raise ValueError(
                        f"the adapted weight {weight.name} has no L2-SP snapshot; prepare() "
                        "must see the same backbone that is trained"
                    )
                terms.adapted.append(weight)
            elif not weight.parameter.requires_grad:
                continue
            elif weight.name in self.anchor:
                terms.anchored.append(weight.parameter)
                terms.anchor_keys.append(weight.name)
            else:
                terms.new.append(weight.parameter)
        return terms

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Ω(θ) of ``step.model`` (float32, :class:`StartingPointDistance`); gradients flow to
        its parameters.

        Raises:
            ValueError: no model in ``step``, no snapshot yet, or an adapted weight that was
                not snapshotted.
        """
        if step.model is None:
            raise ValueError("--reg l2sp needs the model in StepInputs.model")
        if not len(self.anchor):
            raise ValueError("L2SP.prepare() must run (or a state dict be loaded) before penalty()")
        terms = self._terms(step.model, step.backbone_weights)
        weights, anchors = list(terms.anchored), [self.anchor[k] for k in terms.anchor_keys]
        # the effective weights W₀ + ΔW in float32, too
        with torch.autocast(device_type=step.embeddings.device.type, enabled=False):
            for weight in terms.adapted:
                weights.append(weight.value())
                anchors.append(self.anchor[weight.name])
        return self.distance(weights, anchors, terms.new)


def _forget_terms(module: L2SP, incompatible_keys: object = None) -> None:
    """Drop ``module``'s cached _Terms: its snapshot changed (prepare, load_state_dict)."""
    module._terms_cache = None
