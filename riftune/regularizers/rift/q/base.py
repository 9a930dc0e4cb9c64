r"""The interface of RIFT's orthogonal map Q, and the registry that maps ``q="..."`` to a class.

Both matchings call Q through these methods and never ask which Q it is:

- covariance matching (:mod:`~riftune.regularizers.rift.covariance`) moves the batch into Q's
  frame (:meth:`QStrategy.to_frame`), then asks for the covariance gap
  ‖Σ̄ − QᵀΣ₀Q‖²_F (:meth:`~QStrategy.covariance_gap`, or with running estimates the target
  :meth:`~QStrategy.running_target`) and the mean gap ‖μ̄ − Qᵀμ₀‖² (:meth:`~QStrategy.mean_gap`);
- paired matching (:mod:`~riftune.regularizers.rift.paired`) asks for ‖Ẑ − R̂Q‖²_F
  (:meth:`~QStrategy.paired_distance`).

The defaults are those of a fixed Q that :meth:`~QStrategy.to_frame` and
:meth:`~QStrategy.align_reference` apply (Q = I unless overridden): the batch is compared with
Σ₀, μ₀ and R̂ as they are once it is in Q's frame. A Q found per batch overrides the gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from riftune.errors import UserError
from riftune.regularizers.rift.options import DEFAULT_Q_RANK

#: every registered Q by its ``q`` name, in the order they were registered
Q_STRATEGIES: dict[str, type[QStrategy]] = {}


@dataclass(frozen=True)
class QSettings:
    """What a Q may need to know about the RIFT module it serves.

    Attributes:
        dim: the embedding size d.
        q_rank: ``q_rank`` as given to RIFT (used only by a Q that takes it).
        eigh_every: training calls between refreshes of a running target's eigenbasis.
        covariance: the matching compares covariances with a fitted Σ₀ (else paired rows).
        running: the statistics are running estimates (``stats="ema"``).
    """

    dim: int
    q_rank: int | None
    eigh_every: int
    covariance: bool
    running: bool


class QStrategy(nn.Module):
    """One kind of orthogonal map Q: its parameters, buffers, checks and what it adds to a loss.

    Subclasses set ``name`` (the ``q`` value), ``help`` (its ``--rift-q`` help), the options
    they take beyond ``q`` (``options``), the benchmark variants they run as, and the old
    state-dict names of their tensors (``legacy_keys``: RIFT renames them on load).

    Args:
        settings: the RIFT module's settings.

    Raises:
        ValueError: an option this Q does not take was given (:meth:`refused_option`).
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()
    bench_variants: ClassVar[dict[str, dict]] = {"": {}}
    legacy_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: QSettings):
        super().__init__()
        # the default rank goes with any Q, so that RIFT(q=...) needs no q_rank=None
        given_rank = None if settings.q_rank == DEFAULT_Q_RANK else settings.q_rank
        refused = self.refused_option({"q_rank": given_rank})
        if refused is not None:
            takers = " or ".join(f"q={name!r}" for name in names_taking(refused))
            raise ValueError(f"{refused} applies to {takers} only, got q={self.name!r}")
        self.dim = settings.dim

    @classmethod
    def refused_option(cls, given: Mapping[str, object]) -> str | None:
        """The first of ``given`` (name: value, None for unset) that this Q does not take."""
        return next(
            (key for key, value in given.items() if value is not None and key not in cls.options),
            None,
        )

    def extra_repr(self) -> str:
        return f"q={self.name!r}"

    @torch.no_grad()
    def fit(self, cov: Tensor) -> None:
        """Take what Q needs from Σ₀ (d, d, float64) when the reference is fitted."""

    def matrix(self, like: Tensor) -> Tensor:
        """Q as a dense (d, d) matrix, on ``like``'s device and dtype unless Q has its own."""
        return torch.eye(self.dim, device=like.device, dtype=like.dtype)

    def to_frame(self, zc: Tensor, mean: Tensor, with_mean: bool) -> tuple[Tensor, Tensor]:
        """(Z_cQᵀ, Qμ): the centered rows and, with ``with_mean``, the mean in Q's frame.

        Shape:
            - zc: (n, d); mean: (d,).
            - output: (n, d) and (d,).
        """
        return zc, mean

    def align_reference(self, r_hat: Tensor) -> Tensor:
        """R̂Q: the reference rows r̂ᵢ mapped to Qᵀr̂ᵢ.

        Shape:
            - r_hat, output: (k, d).
        """
        return r_hat

    def covariance_gap(self, zc: Tensor, gap_to_reference: Callable[[Tensor], Tensor]) -> Tensor:
        """‖Σ(z) − QᵀΣ₀Q‖²_F for rows already in Q's frame: ``gap_to_reference(zc)``, the
        matching's ‖Σ(z) − Σ₀‖²_F.

        Shape:
            - zc: (n, d), centered.
            - output: scalar.
        """
        return gap_to_reference(zc)

    def running_target(self, sigma: Tensor, reference_cov: Tensor) -> Tensor:
        """T in ‖Σ̄ − T‖²_F for the running Σ̄ (in Q's frame): Σ₀.

        Shape:
            - sigma, reference_cov, output: (d, d).
        """
        return reference_cov.to(sigma.dtype)

    def mean_gap(self, mean: Tensor, mu0: Tensor) -> Tensor:
        """‖μ̄ − Qᵀμ₀‖² for μ̄ in Q's frame: ‖μ̄ − μ₀‖².

        Shape:
            - mean, mu0: (d,).
            - output: scalar.
        """
        return (mean - mu0).square().sum()

    def paired_distance(self, z_hat: Tensor, r_hat: Tensor) -> Tensor:
        """‖Ẑ − R̂Q‖²_F.

        Shape:
            - z_hat, r_hat: (k, d).
            - output: scalar.
        """
        diff = z_hat - self.align_reference(r_hat)
        return torch.dot(diff.view(-1), diff.view(-1))


def register_q(cls: type[QStrategy]) -> type[QStrategy]:
    """Class decorator: make ``cls`` the Q of ``q=cls.name`` (flags, configs, RIFT)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    Q_STRATEGIES[cls.name] = cls
    return cls


def q_strategy(name: str) -> type[QStrategy]:
    """The Q class registered as ``name``; UserError (a ValueError) naming the registered ones."""
    if not isinstance(name, str) or name not in Q_STRATEGIES:  # a config file may give a list
        raise UserError(f"q must be one of {', '.join(Q_STRATEGIES)}; got {name!r}")
    return Q_STRATEGIES[name]


def names_taking(option: str) -> list[str]:
    """The names of the registered Q that take ``option`` (e.g. ``"q_rank"``)."""
    return [name for name, cls in Q_STRATEGIES.items() if option in cls.options]
