"""The ``--rift-*`` command-line flags and building :class:`RIFT` from them.

Self-contained: nothing outside this file knows the flags' spellings or defaults, so a typed
options class can replace it in one place.

``--rift-q-rank`` applies to ``--rift-q learned`` only, and giving it with another Q is an
error whatever its value. Its default is :data:`DEFAULT_Q_RANK` as an ``int`` subclass, so that
:func:`from_args` can tell the default from the same number typed (``--rift-q optimal
--rift-q-rank 64``): in the namespace, a run's ``config.yaml`` and JSON it is the plain number.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import yaml

from riftune.errors import UserError
from riftune.regularizers.rift.options import (
    DEFAULT_Q_RANK,
    MATCHES,
    REFERENCE_SOURCES,
    ROTATIONS,
    STATISTICS,
)

if TYPE_CHECKING:
    from riftune.regularizers.rift.regularizer import RIFT

# `--reg rift` with no other flags: chosen by the rule in RESULTS.md ("Which RIFT variant")
CLI_DEFAULT_MATCH = "paired"
CLI_DEFAULT_Q = "optimal"
CLI_DEFAULT_LAM = 0.1


class _DefaultRank(int):
    """The value of ``--rift-q-rank`` when the flag is not given (equal to the plain int)."""


for _dumper in (yaml.SafeDumper, yaml.Dumper):  # written to config.yaml as the plain number
    _dumper.add_representer(_DefaultRank, yaml.SafeDumper.represent_int)


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """Add the ``--rift-*`` flags."""
    parser.add_argument(
        "--rift-match",
        choices=MATCHES,
        default=CLI_DEFAULT_MATCH,
        help="what RIFT matches: 'covariance' matches the batch covariance to the "
        "pretrained covariance (no per-sample reference); 'paired' matches each sample's "
        "embedding to its pretrained embedding, up to centering, scale and Q "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rift-q",
        choices=ROTATIONS,
        default=CLI_DEFAULT_Q,
        help="the orthogonal map Q: 'identity' (none), 'learned' (one rotation trained "
        "with the model) or 'optimal' (the best rotation per batch, in closed form) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rift-q-rank",
        type=_q_rank,
        default=_DefaultRank(DEFAULT_Q_RANK),
        metavar="K",
        help="--rift-q learned: rotate at most a K-dimensional subspace (K/2 pairs of "
        "Householder reflections, started at the top principal directions of the "
        "pretrained embeddings; K even): K·d parameters and O(n·K·d) work; 'all' (or "
        "K >= d) rotates all d dimensions: d² parameters, O(n·d²) (default: %(default)s)",
    )
    parser.add_argument(
        "--rift-q-lr",
        type=float,
        default=None,
        metavar="LR",
        help="--rift-q learned: the learning rate of Q's reflectors (AdamW, no weight "
        "decay, the model's schedule). Q enters the loss only through lam * penalty and "
        "AdamW's steps ignore the scale of the gradient, so this, not --lam, sets how fast "
        "Q turns (default: --head-lr)",
    )
    parser.add_argument(
        "--rift-stats",
        choices=STATISTICS,
        default="batch",
        help="covariance statistics: 'batch' (this batch's) or 'ema' (a running estimate "
        "updated by each batch; covariance matching only) (default: %(default)s)",
    )
    parser.add_argument(
        "--rift-momentum",
        type=float,
        default=0.1,
        metavar="M",
        help="weight of the current batch in the running estimate, in (0, 1] "
        "(--rift-stats ema) (default: %(default)s)",
    )
    parser.add_argument(
        "--rift-eigh-every",
        type=int,
        default=10,
        metavar="K",
        help="--rift-stats ema with --rift-q optimal: recompute the eigenvectors of the "
        "running covariance every K steps (1: every step, exact; larger: cheaper, an upper "
        "bound in between) (default: %(default)s)",
    )
    parser.add_argument(
        "--rift-mean-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the term that also matches the mean embedding (default: %(default)s)",
    )
    parser.add_argument(
        "--rift-normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="divide the covariance loss by the squared Frobenius norm of the pretrained "
        "covariance, so the regularization weight means the same across backbones "
        "(default: on)",
    )
    parser.add_argument(
        "--rift-reference",
        choices=REFERENCE_SOURCES,
        default=None,
        help="paired matching: take pretrained embeddings from a cache filled once before "
        "training ('cache') or from a frozen forward pass each step ('teacher') "
        "(default: cache)",
    )


def from_args(cls: type[RIFT], args: argparse.Namespace, dim: int) -> RIFT:
    """``cls`` built from the parsed ``--rift-*`` flags; bad combinations are UserErrors.

    Raises:
        UserError: ``--reg rift: <the problem>``, one line.
    """
    q_lr, rank = args.rift_q_lr, args.rift_q_rank
    try:
        if q_lr is not None and args.rift_q != "learned":
            raise ValueError(f"--rift-q-lr applies to --rift-q learned only, got {args.rift_q}")
        if q_lr is not None and not (math.isfinite(q_lr) and q_lr > 0):
            raise ValueError(f"--rift-q-lr must be a positive number, got {q_lr}")
        if type(rank) is not _DefaultRank and args.rift_q != "learned":
            raise ValueError(
                f"--rift-q-rank applies to --rift-q learned only, got --rift-q {args.rift_q}"
            )
        rift = cls(
            dim,
            match=args.rift_match,
            q=args.rift_q,
            q_rank=None if rank is None else int(rank),
            normalize=args.rift_normalize,
            mean_weight=args.rift_mean_weight,
            stats=args.rift_stats,
            momentum=args.rift_momentum,
            reference_source=args.rift_reference or "cache",
            eigh_every=args.rift_eigh_every,
        )
    except ValueError as err:
        raise UserError(f"--reg rift: {err}") from None
    rift.param_lr = q_lr
    return rift


def _q_rank(text: str) -> int | None:
    """``--rift-q-rank``: an integer, or ``all`` (None: every dimension)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an even integer or 'all', got {text!r}"
        ) from None
