"""``--reg rift``'s options as a typed section: the ``--rift-*`` flags and its part of
config.yaml are generated from :class:`RiftOptions` (see :mod:`riftune.options`).

``--rift-q`` takes the name of any Q registered in :mod:`riftune.regularizers.rift.q`.
``--rift-q-rank`` and ``--rift-q-lr`` apply to the Q that takes them (``--rift-q learned``) only,
and giving either with another Q is an error whatever its value (the rule is the Q's,
:meth:`QStrategy.refused_option`); unset, the rank is :data:`DEFAULT_Q_RANK`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar, Literal

from riftune.errors import UserError
from riftune.options import (
    Section,
    flag,
    fraction,
    non_negative,
    option,
    positive,
    positive_finite,
)
from riftune.regularizers.rift.options import DEFAULT_Q_RANK
from riftune.regularizers.rift.q import Q_STRATEGIES, names_taking, q_strategy

#: the names of the registered Q (``--rift-q``'s choices)
Q_NAMES = tuple(Q_STRATEGIES)

# `--reg rift` with no other flags: chosen by the Defaults rule (docs/strength.md; RESULTS.md,
# "Defaults"): paired matching, optimal Q, a similarity budget of 0.8 (λ by dual ascent). The
# fixed weight of --rift-match covariance, and of --budget-mode geco's start, is CLI_DEFAULT_LAM.
CLI_DEFAULT_MATCH = "paired"
CLI_DEFAULT_Q = "optimal"
CLI_DEFAULT_TARGET_SIMILARITY = 0.8
CLI_DEFAULT_LAM = 0.1


#: the options that only some Q take
_Q_OPTIONS = frozenset({"q_rank", "q_lr"})


def _alternatives(texts: list[str]) -> str:
    """``"a, b or c"``."""
    return " or ".join([", ".join(texts[:-1]), texts[-1]]) if len(texts) > 1 else texts[0]


def _q_rank(text: str) -> int | str:
    """``--rift-q-rank``: an integer, or ``all`` (every dimension)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an even integer or 'all', got {text!r}"
        ) from None


def _even_rank(value: int | str | None) -> str | None:
    if value is None or value == "all" or (value >= 2 and value % 2 == 0):
        return None
    return "must be even and >= 2, or 'all'"


@dataclass
class RiftOptions(Section):
    """``--reg rift``'s options (``--rift-*``); defaults are the CLI's (RESULTS.md's rule)."""

    flag_prefix: ClassVar[str] = "rift"
    match: Literal["covariance", "paired"] = option(
        CLI_DEFAULT_MATCH,
        "what RIFT matches: 'covariance' matches the batch covariance to the pretrained "
        "covariance (no per-sample reference); 'paired' matches each sample's embedding to its "
        "pretrained embedding, up to centering, scale and Q",
    )
    q: Literal[Q_NAMES] = option(
        CLI_DEFAULT_Q,
        "the orthogonal map Q: " + _alternatives([c.help for c in Q_STRATEGIES.values()]),
    )
    q_rank: int | Literal["all"] | None = option(
        None,
        f"--rift-q learned: rotate at most a K-dimensional subspace (K/2 pairs of Householder "
        "reflections, started at the top principal directions of the pretrained embeddings; K "
        "even): K·d parameters and O(n·K·d) work; 'all' (or K >= d) rotates all d dimensions: "
        f"d² parameters, O(n·d²) (default with learned Q: {DEFAULT_Q_RANK})",
        parse=_q_rank,
        check=_even_rank,
        metavar="K",
    )
    q_lr: float | None = option(
        None,
        "--rift-q learned: the learning rate of Q's reflectors (AdamW, no weight decay, the "
        "model's schedule). Q enters the loss only through lam * penalty and AdamW's steps "
        "ignore the scale of the gradient, so this, not --lam, sets how fast Q turns "
        "(default: --head-lr)",
        check=positive_finite,
        metavar="LR",
    )
    stats: Literal["batch", "ema"] = option(
        "batch",
        "covariance statistics: 'batch' (this batch's) or 'ema' (a running estimate updated "
        "by each batch; covariance matching only)",
    )
    momentum: float = option(
        0.1,
        "weight of the current batch in the running estimate, in (0, 1] (--rift-stats ema)",
        check=fraction,
        metavar="M",
    )
    eigh_every: int = option(
        10,
        "--rift-stats ema with --rift-q optimal: recompute the eigenvectors of the running "
        "covariance every K steps (1: every step, exact; larger: cheaper, an upper bound in "
        "between)",
        check=positive,
        metavar="K",
    )
    mean_weight: float = option(
        0.0,
        "weight of the term that also matches the mean embedding",
        check=non_negative,
        metavar="W",
    )
    normalize: bool = option(
        True,
        "divide the covariance loss by the squared Frobenius norm of the pretrained "
        "covariance, so the regularization weight means the same across backbones",
    )
    reference: Literal["cache", "teacher"] = option(
        "cache",
        "paired matching: take pretrained embeddings from a cache filled once before training "
        "('cache') or from a frozen forward pass each step ('teacher')",
    )

    def check(self) -> None:
        """The rules across flags; RIFT's constructor keeps the same rules for Python callers."""
        q_class = q_strategy(self.q)
        refused = q_class.refused_option({"q_rank": self.q_rank, "q_lr": self.q_lr})
        if refused is not None:
            takers = " or ".join(names_taking(refused))
            raise UserError(
                f"{flag(RiftOptions, refused)} applies to --rift-q {takers} only, got "
                f"--rift-q {self.q}"
            )
        if "q_rank" in q_class.options and self.q_rank is None:
            self.q_rank = DEFAULT_Q_RANK
        if self.match == "paired" and self.stats == "ema":
            raise UserError("--reg rift: --rift-stats ema applies to --rift-match covariance only")
        if self.match == "covariance" and self.reference != "cache":
            raise UserError(
                "--rift-reference applies to --rift-match paired only; covariance matching uses "
                "fitted statistics"
            )

    def to_dict(self) -> dict:
        """The options that apply: Q's rank and learning rate only with a Q that takes them."""
        values = super().to_dict()
        for name in _Q_OPTIONS - q_strategy(self.q).options:
            del values[name]
        return values

    @classmethod
    def from_legacy(cls, values: dict) -> dict:
        """Values of a config.yaml written before typed configs: every flag was stored, so
        drop the learned-Q options of a run without learned Q; ``q_rank: null`` meant 'all'."""
        values = dict(values)
        taken = q_strategy(values.get("q", CLI_DEFAULT_Q)).options
        for name in _Q_OPTIONS - taken:
            values.pop(name, None)
        if "q_rank" in taken and "q_rank" in values and values["q_rank"] is None:
            values["q_rank"] = "all"
        if values.get("reference") is None:
            values.pop("reference", None)
        return values
