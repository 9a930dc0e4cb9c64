"""What ``riftune tune`` compares: plain finetuning, each method alone, and regularized ladders.

A :class:`Candidate` is a finetuning method with a regularizer at one strength. Its name is
what the report shows: ``plain`` (full finetuning, no regularizer), ``lora`` (another method
alone), ``rift[budget=0.85]``, ``lora+rift[budget=0.7]``, ``cka[lam=1]``. Its ``flags`` are the
finetune flags of the configuration tuned.yaml holds; ``trial_flags`` what its trials run
(the same, except that an unregularized candidate also logs paired RIFT's penalty at λ = 0,
which anchors the ladder: :mod:`riftune.strength.ladder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from riftune import regularizers, tuning
from riftune.errors import UserError
from riftune.strength.ladder import ANCHOR_FLAGS, budget_rungs, lam_rungs

BUDGET_REGULARIZERS = ("rift",)
"""Regularizers whose default ladder is a similarity budget anchored on plain's drift."""


@dataclass(frozen=True)
class Candidate:
    """One configuration under study.

    Attributes:
        method: The finetuning method (``--method``).
        regularizer: The regularizer (``--reg``), ``none`` for the method alone.
        strength: ``budget=S`` or ``lam=Λ``; None for the method alone.
        flags: The candidate's finetune flags (method, regularizer, strength).
    """

    method: str
    regularizer: str = "none"
    strength: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.regularizer == "none":
            return "plain" if self.method == "full" else self.method
        prefix = "" if self.method == "full" else f"{self.method}+"
        return f"{prefix}{self.regularizer}[{self.strength}]"

    @property
    def is_baseline(self) -> bool:
        """Whether this is a method alone (its trials also anchor that method's ladder)."""
        return self.regularizer == "none"

    @property
    def trial_flags(self) -> tuple[str, ...]:
        """The flags its trials run: an unregularized one logs RIFT's penalty at λ = 0."""
        if self.is_baseline:
            return ("--method", self.method, *ANCHOR_FLAGS)
        return self.flags


def baseline(method: str) -> Candidate:
    """``method`` alone (``plain`` for full finetuning)."""
    return Candidate(method, flags=("--method", method, "--reg", "none"))


def check_components(methods: Sequence[str], regs: Sequence[str]) -> None:
    """UserError unless every method and regularizer is registered and can move the features.

    ``full`` must be among the methods: plain finetuning is the reference of the rule.
    """
    for name in methods:
        if name not in tuning.available():
            raise UserError(f"--methods {name}: choose from {', '.join(tuning.available())}")
        if not tuning.get(name).changes_embeddings:
            raise UserError(
                f"--methods {name} keeps the pretrained features, so it drifts nowhere and "
                "anchors no ladder; tune methods that train the backbone"
            )
    if "full" not in methods:
        raise UserError("--methods must include full: plain finetuning is what tune compares to")
    for name in regs:
        if name == "none" or name not in regularizers.available():
            known = [r for r in regularizers.available() if r != "none"]
            raise UserError(f"--regularizers {name}: choose from {', '.join(known)}")


def ladder(
    method: str,
    reg: str,
    anchor: float,
    *,
    use_budget: bool,
    fractions: Sequence[float],
    lams: Sequence[float] | None,
) -> list[Candidate]:
    """``reg`` with ``method`` at each rung: similarity budgets anchored on ``anchor`` (the
    method's own unregularized similarity) when ``use_budget`` and ``reg`` takes one, else λ
    (``lams``, or the factors of the regularizer's default λ when None)."""
    head = ("--method", method, "--reg", reg)
    if use_budget and reg in BUDGET_REGULARIZERS:
        paired = ("--rift-match", "paired", "--rift-q", "optimal")
        return [
            Candidate(method, reg, f"budget={s:g}", (*head, *paired, "--target-similarity", str(s)))
            for s in budget_rungs(anchor, fractions)
        ]
    values = list(lams) if lams else lam_rungs(regularizers.get(reg).default_lam)
    return [Candidate(method, reg, f"lam={lam:g}", (*head, "--lam", repr(lam))) for lam in values]
