r"""The ``RIFT`` module: options, reference statistics, input checks and the riftune protocol.

The losses themselves live in :mod:`~riftune.regularizers.rift.covariance` and
:mod:`~riftune.regularizers.rift.paired` (one class each, chosen once in ``__init__``), the
math they share in :mod:`~riftune.regularizers.rift.functional` and Q in
:mod:`~riftune.regularizers.rift.q` (one strategy module per kind, the submodule ``q``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from riftune.distributed import gather_global_batch
from riftune.errors import UserError
from riftune.regularizers.base import PretrainedView, Regularizer, StepInputs, register
from riftune.regularizers.rift import flags
from riftune.regularizers.rift.covariance import CovarianceMatching
from riftune.regularizers.rift.flags import RiftOptions
from riftune.regularizers.rift.functional import check_rows, compute_dtype
from riftune.regularizers.rift.options import (
    DEFAULT_Q_RANK,
    MATCHES,
    REFERENCE_SOURCES,
    STATISTICS,
    choice,
)
from riftune.regularizers.rift.paired import PairedMatching
from riftune.regularizers.rift.q import QSettings, q_strategy
from riftune.regularizers.statistics import StreamingMoments


@register
class RIFT(Regularizer):
    r"""RIFT regularizer: keep the finetuned embeddings the pretrained ones up to a rotation.

    Paper: "RIFT", arXiv 2503.07399 (https://arxiv.org/abs/2503.07399). ``q="optimal"`` is
    what the design notes call "spectral".

    Notation: z is the (n, d) batch of finetuned embeddings, μ(z) its mean, Z_c = z − μ(z) its
    centered rows, Σ(z) = Z_cᵀZ_c/(n − 1) its unbiased covariance; μ₀ and Σ₀ are the mean and
    unbiased covariance of the pretrained embeddings over the training set
    (:meth:`fit_reference`); Q is orthogonal; w = ``mean_weight``.

    - **match="covariance"** (the paper's objective, :mod:`.covariance`):
      L = ‖Σ̄ − QᵀΣ₀Q‖²_F/c_Σ + w‖μ̄ − Qᵀμ₀‖²/c_μ, with Σ̄, μ̄ this batch's statistics or
      running estimates (``stats``), c_Σ = ‖Σ₀‖²_F and c_μ = tr Σ₀ with ``normalize``.
    - **match="paired"** (the invariance the paper argues from, Z_ft ≈ Z_pre·Q,
      :mod:`.paired`): ``forward(z, reference)`` with the pretrained embeddings of the same
      samples; L = ‖Ẑ − R̂Q‖²_F for both sides centered and scaled to unit norm (the scaled
      means appended with w > 0). Scale-free: ``normalize`` has no effect, and
      ``stats="ema"`` does not apply.
    - ``q``: ``"identity"`` (Q = I), ``"learned"`` (Q = :attr:`rotation`, one
      :class:`HouseholderRotation` trained with the model: give RIFT's parameters to the
      optimizer) or ``"optimal"`` (each term at its minimum over Q, in closed form, never
      stored), or any other Q registered in :mod:`riftune.regularizers.rift.q`. The submodule
      :attr:`q` is that strategy, which owns Q's parameters and buffers.

    **What each variant preserves.** A covariance says nothing about which sample sits where:
    covariance/identity keeps the second moments in the original coordinates; learned and
    optimal keep only their spectrum. Paired matching keeps each sample's embedding relative
    to the others (after centering and a global scale): identity in the original coordinates,
    learned up to one rotation shared across steps, optimal up to any rotation per batch,
    which is exactly the invariance Z_ft ≈ Z_pre·Q.

    Statistics are computed in float32 or wider (autocast is disabled inside and bf16/fp16
    inputs are upcast). Under an initialized ``torch.distributed`` process group the batch
    (and the reference) are all-gathered differentiably
    (:func:`riftune.distributed.gather_global_batch`), so every formula holds for the global batch
    and DDP-averaged gradients equal those of one process on it.

    Args:
        dim: the embedding size d.
        match: ``"covariance"`` or ``"paired"``.
        q: the name of a registered Q: ``"identity"``, ``"learned"`` or ``"optimal"``.
        q_rank: ``q="learned"`` only: an even k ≥ 2 for a rotation that moves at most a
            k-dimensional subspace (k ≥ d or None: all of ℝᵈ, d reflections); default 64.
        normalize: divide by ‖Σ₀‖²_F (and tr Σ₀); covariance matching only.
        mean_weight: w ≥ 0, the weight of the mean term.
        stats: ``"batch"`` or ``"ema"`` (covariance matching only).
        momentum: m ∈ (0, 1], the weight of the current batch in the running estimates.
        eigh_every: k ≥ 1; ``stats="ema"`` with ``q="optimal"`` recomputes the eigenvectors
            of the running covariance every k training calls (1: every call, exact).
        reference_source: where paired references come from during training: ``"cache"``
            (pretrained embeddings of each training sample computed once before training)
            or ``"teacher"`` (a frozen forward pass each step). Paired matching only.

    Shape:
        - z: (n, d), n ≥ 2, any floating dtype.
        - reference: (n, d), the pretrained embeddings of the same samples (paired only).
        - output: scalar, float32 (float64 for float64 inputs).
    """

    name = "rift"
    min_batch_size = 2  # a covariance or a centred pair needs two samples
    default_lam = flags.CLI_DEFAULT_LAM
    default_similarity = flags.CLI_DEFAULT_TARGET_SIMILARITY
    penalizes_features_only = True

    def __init__(
        self,
        dim: int,
        match: str = "covariance",
        q: str = "identity",
        q_rank: int | None = DEFAULT_Q_RANK,
        normalize: bool = True,
        mean_weight: float = 0.0,
        stats: str = "batch",
        momentum: float = 0.1,
        reference_source: str = "cache",
        eigh_every: int = 10,
    ):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer (the embedding size), got {dim!r}")
        self.dim = dim
        self.match = choice("match", match, MATCHES)
        q_class = q_strategy(q)
        self.stats = choice("stats", stats, STATISTICS)
        choice("reference_source", reference_source, REFERENCE_SOURCES)
        if not (math.isfinite(mean_weight) and mean_weight >= 0):
            raise ValueError(f"mean_weight must be a finite number >= 0, got {mean_weight}")
        if not (0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if not (isinstance(eigh_every, int) and eigh_every >= 1):
            raise ValueError(f"eigh_every must be an integer >= 1, got {eigh_every!r}")
        if match == "paired" and stats == "ema":
            raise ValueError(
                "stats='ema' applies to match='covariance' only; use stats='batch' with paired"
            )
        if match == "covariance" and reference_source != "cache":
            raise ValueError(
                "reference_source applies to match='paired' only; covariance matching uses "
                "fitted statistics"
            )
        self.normalize = normalize
        self.mean_weight = float(mean_weight)
        self.momentum = float(momentum)
        self.eigh_every = eigh_every
        settings = QSettings(dim, q_rank, eigh_every, match == "covariance", stats == "ema")
        self.q = q_class(settings)
        self.matching: CovarianceMatching | PairedMatching = (
            PairedMatching(self.q, self.mean_weight, reference_source)
            if match == "paired"
            else CovarianceMatching(self.q, stats, normalize, self.mean_weight, self.momentum)
        )
        self.reference = self.matching.reference

        self.register_buffer("ref_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("ref_mean", torch.zeros(dim))
        self.register_buffer("ref_cov_sq_norm", torch.zeros(()))
        self.register_buffer("ref_trace", torch.zeros(()))
        for key, value in self.matching.buffers(dim).items():
            self.register_buffer(key, value)
        self.fitted = False
        self.register_load_state_dict_post_hook(_after_load)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, match={self.match!r}, normalize={self.normalize}, "
            f"mean_weight={self.mean_weight}, stats={self.stats!r}, momentum={self.momentum}, "
            f"eigh_every={self.eigh_every}, reference={self.reference!r}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for key in self.matching.dropped_state_keys:  # written by older versions
            state_dict.pop(prefix + key, None)
        for old, new in self.q.legacy_keys.items():  # Q's tensors were the module's own
            if prefix + old in state_dict:
                state_dict[f"{prefix}q.{new}"] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ----------------------------------------------------------------- reference statistics

    @torch.no_grad()
    def fit_reference(
        self, features: Tensor | Iterable[Tensor], *, all_reduce: bool = True
    ) -> RIFT:
        """Fit μ₀ and the unbiased Σ₀ of the pretrained embeddings, streaming, in float64.

        Stores ‖Σ₀‖²_F, tr Σ₀, what the matching needs (covariance: Σ₀, the running estimates
        reset to Σ₀, μ₀ with ``stats="ema"``) and what Q takes from Σ₀ (:meth:`QStrategy.fit`:
        its eigenvalues with ``q="optimal"``; a learned Q with ``q_rank=k`` reset to I with its
        reflection pairs at Σ₀'s top k/2 eigenvectors); all are buffers or parameters, so
        ``state_dict()`` round-trips them.

        Args:
            features: an (N, d) tensor, or an iterable of (n, d) tensors (e.g. one per batch).
            all_reduce: under an initialized ``torch.distributed``, treat ``features`` as this
                rank's shard and combine the statistics of all ranks (every rank must call).
                Pass ``False`` when every rank holds all the data.

        Returns:
            ``self``.
        """
        moments = StreamingMoments(self.dim)
        chunks = [features] if isinstance(features, Tensor) else features
        for chunk in chunks:
            if not isinstance(chunk, Tensor):
                raise ValueError(
                    f"reference features must be tensors of shape (n, {self.dim}), "
                    f"got {type(chunk).__name__}"
                )
            check_rows(chunk, "reference features", self.dim, min_rows=0)
            if not torch.isfinite(chunk).all():
                raise ValueError(
                    "reference features contain NaN or infinite values; check the pretrained "
                    "model's embeddings"
                )
            moments.update(chunk)
        if all_reduce:
            moments.all_reduce()
        if moments.count < 2:
            raise ValueError(f"fit_reference needs at least 2 reference rows, got {moments.count}")
        cov, mean = moments.covariance(), moments.mean()
        self.matching.check_fit(cov)
        self.ref_count.fill_(moments.count)
        self.ref_mean.copy_(mean)
        self.ref_cov_sq_norm.copy_(cov.square().sum())
        self.ref_trace.copy_(torch.trace(cov))
        self.matching.fit(self, cov, mean)
        self.q.fit(cov)
        self.fitted = True
        return self

    @property
    def rotation(self) -> Tensor:
        """Q (d, d): the learned rotation (differentiable), or I for ``q="identity"``.

        ``q="optimal"`` stores none (the optimal Q depends on the batch): ValueError.
        """
        return self.q.matrix(self.ref_mean)

    # --------------------------------------------------------------------------- forward

    def forward(self, z: Tensor, reference: Tensor | None = None) -> Tensor:
        """The RIFT loss of a batch (see the class docstring for every formula).

        Args:
            z: finetuned embeddings of the batch (n, d), with gradient.
            reference: pretrained embeddings of the same samples (n, d); paired matching only.

        Returns:
            A scalar tensor.
        """
        check_rows(z, "embeddings", self.dim)
        self.matching.check_inputs(self, z, reference)
        dtype = compute_dtype(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = gather_global_batch(z).to(dtype)
            if reference is not None:
                reference = gather_global_batch(reference.detach()).to(dtype)
            return self.matching.loss(self, z, reference)

    # ------------------------------------------------------------------- riftune protocol

    def prepare(self, pretrained: PretrainedView) -> None:
        """Fit the reference statistics from the pretrained training-set embeddings.

        Every rank holds all of them (see :class:`PretrainedView`), so nothing is reduced.
        """
        self.fit_reference(pretrained.train_embeddings, all_reduce=False)

    def penalty(self, step: StepInputs) -> Tensor:
        """``self(embeddings)``, or ``self(embeddings, reference)`` for paired matching."""
        if self.reference is None:
            return self(step.embeddings)
        if step.reference is None:
            raise ValueError(
                f"RIFT(match={self.match!r}) needs reference embeddings in StepInputs; the "
                f"engine must supply them from {self.reference!r}"
            )
        return self(step.embeddings, step.reference)

    Options = RiftOptions

    @classmethod
    def default_budget_similarity(cls, options: RiftOptions) -> float | None:
        """:data:`~riftune.regularizers.rift.flags.CLI_DEFAULT_TARGET_SIMILARITY` for paired
        matching; None for the covariance penalty, which is no similarity."""
        return cls.default_similarity if options.match == "paired" else None

    @classmethod
    def budget_for_similarity(cls, similarity: float, options: RiftOptions) -> float:
        """ε = 2 − 2s for paired matching: D = ‖ẑ − r̂Q‖²_F = 2 − 2s, s the Procrustes
        similarity (with ``q=identity`` the trace similarity).

        Raises:
            UserError: covariance matching, whose penalty is no similarity.
        """
        if options.match != "paired":
            raise UserError(
                "--target-similarity with --reg rift needs --rift-match paired (the "
                "covariance penalty is no similarity); give --budget EPS instead"
            )
        return 2.0 - 2.0 * similarity

    @classmethod
    def from_options(cls, options: RiftOptions, dim: int) -> RIFT:
        """RIFT as ``--reg rift`` builds it; ``options`` are already checked."""
        q_rank = DEFAULT_Q_RANK if options.q_rank is None else options.q_rank
        rift = cls(
            dim,
            match=options.match,
            q=options.q,
            q_rank=None if q_rank == "all" else q_rank,
            normalize=options.normalize,
            mean_weight=options.mean_weight,
            stats=options.stats,
            momentum=options.momentum,
            reference_source=options.reference,
            eigh_every=options.eigh_every,
        )
        rift.param_lr = options.q_lr
        return rift


def _after_load(module: RIFT, incompatible_keys: Any) -> None:
    module.fitted = bool(module.ref_count.item() >= 2)
    module.matching.after_load(module)
