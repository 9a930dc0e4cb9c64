r"""Any riftune regularizer, its weight λ and the per-sample pretrained cache, for a loop riftune
does not run (the framework integrations' shared part; no framework is imported here).

Each step adds

.. math::

    \text{loss} = \text{task loss} + \lambda \cdot D(z, z_0[\text{index}])

with z the finetuned embeddings of the batch, z₀ the pretrained model's embeddings of every
training sample (filled once, before training, by :meth:`Regularization.fill_cache`) and λ fixed
or a :class:`~riftune.budget.DualAscentWeight` updated after every optimizer step
(:meth:`Regularization.step_done`). The regularizer is the one ``riftune finetune --reg NAME``
builds, prepared the same way (:class:`~riftune.regularizers.PretrainedView`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from riftune import regularizers
from riftune.budget import DualAscentWeight, budget_for_similarity
from riftune.errors import UserError
from riftune.metrics.embeddings import collect_embeddings
from riftune.models.modes import eval_mode
from riftune.regularizers import PretrainedView, Regularizer, StepInputs

Weight = float | DualAscentWeight


class Regularization(nn.Module):
    """A riftune regularizer weighted by λ, with RIFT's per-sample pretrained cache.

    Args:
        regularizer: a registered name (``"rift"``, ``"cka"``, ``"l2sp"``, ...; built with
            ``options`` as ``--reg NAME`` builds it, once the embedding width is known) or a
            built :class:`~riftune.regularizers.Regularizer` (give its parameters, e.g. RIFT's
            learned Q, to your optimizer).
        lam: a fixed λ, or a :class:`~riftune.budget.DualAscentWeight` (a similarity budget).
        target_similarity: instead of ``lam``, keep this similarity s to the pretrained
            embeddings: a budget ε = :func:`~riftune.budget.budget_for_similarity` (paired RIFT:
            2 − 2s; CKA: 1 − s) with the CLI's dual step size 0.5.
        **options: the regularizer's options by field name (``match="covariance"``,
            ``reference="cache"``), as its flags take them.

    Neither ``lam`` nor ``target_similarity``: the CLI's default for this regularizer (paired
    RIFT keeps similarity 0.8; others their default λ).

    Raises:
        UserError: an unknown name or option, both ``lam`` and ``target_similarity``, or (when
            the cache is filled) a regularizer that needs the engine's teacher pass or feature
            maps (DELTA; CKA and feature distillation take ``reference="cache"``) or its
            optimizer (SPD).
    """

    def __init__(
        self,
        regularizer: str | Regularizer = "rift",
        *,
        lam: Weight | None = None,
        target_similarity: float | None = None,
        **options: Any,
    ):
        super().__init__()
        if lam is not None and target_similarity is not None:
            raise UserError("lam and target_similarity say the same thing; pass one")
        built = isinstance(regularizer, Regularizer)
        kind = type(regularizer) if built else _registered(regularizer)
        self.options = kind.Options(**options) if not built else None
        self.regularizer: Regularizer | None = regularizer if built else None
        self._kind = kind
        if target_similarity is None and lam is None and not built:
            target_similarity = kind.default_budget_similarity(self.options)
        if target_similarity is not None:
            lam = DualAscentWeight(budget_for_similarity(kind.name, target_similarity), lr=0.5)
        self.weight: Weight = kind.default_lam if lam is None else lam
        self.register_buffer("cache", torch.empty(0))
        self.width: int | None = None
        self._penalties: list[float] = []
        self.last_penalty: float | None = None

    @property
    def lam(self) -> float:
        """λ for the next step (a budget's λ read back to the host: the frameworks log it
        every step anyway)."""
        if isinstance(self.weight, DualAscentWeight):
            return float(self.weight.value)
        return self.weight

    @property
    def ready(self) -> bool:
        """Whether :meth:`fill_cache` has prepared the regularizer."""
        return self.regularizer is not None and (
            self.regularizer.reference is None or len(self.cache)
        )

    def fill_cache(
        self,
        model: nn.Module,
        embed: Callable[[torch.Tensor], torch.Tensor],
        batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        device: torch.device | str,
    ) -> None:
        """One pass of the pretrained model over the training set, before training.

        Builds the regularizer (if named), prepares it from the pretrained embeddings (RIFT's
        reference statistics, L2-SP's weight snapshot) and keeps them as the per-sample cache.

        Args:
            model: the model about to be finetuned, still pretrained; in eval mode for the pass.
            embed: images (n, 3, H, W) → embeddings (n, d) by ``model`` (run without
                gradient).
            batches: ``(images, labels, indices)`` of every training sample once, without
                augmentation; indices 0..N−1 in any order.
            device: where the images go.

        Raises:
            UserError: the indices are not 0..N−1, each once.
        """
        with eval_mode(model):
            pretrained = collect_embeddings(embed, batches, device)
        count = len(pretrained.indices)
        if not torch.equal(pretrained.indices, torch.arange(count)):
            raise UserError(
                "the training samples' indices must be 0..N-1, each once; got "
                f"{count} samples with indices up to {int(pretrained.indices.max())}"
            )
        width = pretrained.embeddings.shape[1]
        if self.regularizer is None:
            self.regularizer = self._kind.from_options(self.options, width)
        _check_supported(self.regularizer)
        self.regularizer.prepare(
            PretrainedView(
                model=classifier_in(model),
                train_embeddings=pretrained.embeddings,
                train_labels=pretrained.labels,
            )
        )
        self.regularizer.to(device)
        if self.regularizer.reference == "cache":
            self.cache = pretrained.embeddings.to(device)
        self.width = width

    def forward(
        self, embeddings: torch.Tensor, indices: torch.Tensor, model: nn.Module | None = None
    ) -> torch.Tensor:
        """λ·penalty of a batch, the term to add to the task loss.

        Args:
            embeddings: finetuned embeddings of the batch, with gradient. Shape: (n, d).
            indices: each sample's index in the training set. Shape: (n,).
            model: the model being trained (L2-SP reads the backbone of the riftune
                classifier in it, :func:`classifier_in`).

        Returns:
            A scalar; the penalty itself is kept for :meth:`step_done` and the logs.
        """
        if not self.ready:
            raise RuntimeError("fill_cache must run before training (the integration does it)")
        reference = None
        if self.regularizer.reference == "cache":
            reference = self.cache[indices.to(self.cache.device).long()]
        penalty = self.regularizer.penalty(
            StepInputs(
                embeddings=embeddings,
                reference=reference,
                model=None if model is None else classifier_in(model),
            )
        )
        self.last_penalty = float(penalty.detach())
        self._penalties.append(self.last_penalty)
        return self.lam * penalty

    def step_done(self) -> dict[str, float]:
        """After an optimizer step: the step's mean penalty and λ before the dual update
        (for the logs), then λ's update under a budget."""
        if not self._penalties:
            return {}
        penalty = sum(self._penalties) / len(self._penalties)
        logged = {"penalty": penalty, "lam": self.lam}
        self._penalties.clear()
        if isinstance(self.weight, DualAscentWeight):
            self.weight.update(penalty)
        return logged

    def extra_state(self) -> dict[str, Any]:
        """λ's state, the regularizer's tensors and the cache, for a checkpoint."""
        weight = self.weight.state_dict() if isinstance(self.weight, DualAscentWeight) else None
        return {
            "weight": weight,
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
            "cache": self.cache.cpu(),
            "width": self.width,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`: a resumed run must not refill the cache from a
        finetuned model."""
        if state["weight"] is not None:
            self.weight.load_state_dict(state["weight"])
        if self.regularizer is None:
            self.regularizer = self._kind.from_options(self.options, state["width"])
        self.width = state["width"]
        self.regularizer.load_state_dict(state["regularizer"])
        self.cache = state["cache"]


def classifier_in(model: nn.Module) -> nn.Module:
    """The first module in ``model`` (itself included) with a ``backbone``, e.g. the riftune
    :class:`~riftune.models.classifier.Classifier` a LightningModule holds; else ``model``."""
    return next((m for m in model.modules() if hasattr(m, "backbone")), model)


def _registered(name: str) -> type[Regularizer]:
    try:
        return regularizers.get(name)
    except ValueError as error:
        raise UserError(str(error)) from None


def _check_supported(regularizer: Regularizer) -> None:
    if regularizer.optimizer != "adamw":
        raise UserError(
            f"{regularizer.name} acts through riftune's own optimizer, not a penalty; "
            "use riftune finetune"
        )
    if regularizer.needs_feature_maps or regularizer.reference == "teacher":
        raise UserError(
            f"{regularizer.name} needs a teacher pass per batch (or its feature maps), which "
            "only riftune finetune runs; pass reference='cache' where the regularizer has it"
        )
