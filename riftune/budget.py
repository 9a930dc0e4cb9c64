r"""A similarity budget: the regularizer's weight λ as a Lagrange multiplier found by dual ascent.

The RIFT paper (arXiv 2503.07399, its Eq. 5) starts from the constrained problem

.. math::

    \min_\theta\ L_{task}(\theta)\quad\text{s.t.}\quad D(\theta) \le \varepsilon

and relaxes it to a fixed λ. Solving it instead by dual ascent on the Lagrangian
L_task + λ·(D − ε) makes λ follow the constraint: with D̄_t a running mean of the batch penalty,

.. math::

    \bar D_t = \beta\,\bar D_{t-1} + (1 - \beta)\,D_t \quad(\bar D_1 = D_1),\qquad
    \lambda_{t+1} = \begin{cases}
        \max\big(0,\ \lambda_t + \eta\,(\bar D_t - \varepsilon)\big) & \text{additive}\\
        \max\big(\lambda_{min},\ \lambda_t\,e^{\eta(\bar D_t - \varepsilon)}\big)
            & \text{GECO (Rezende \& Viola 2018, arXiv 1810.00597)}
    \end{cases}

λ rises while the budget is exceeded and falls (to exactly 0 in the additive form) while it is
met. A penalty of fixed scale makes ε read naturally (:func:`budget_for_similarity`): paired
RIFT's D = 2 − 2s and the CKA penalty's D = 1 − s, s the similarity to the pretrained
representation; for feature distillation ε is a squared distance, given directly.
"""

from __future__ import annotations

import math
from typing import Literal

from riftune.errors import UserError

Mode = Literal["additive", "geco"]
MODES = ("additive", "geco")


class DualAscentWeight:
    """λ of ``loss = task + λ·penalty``, updated after every step to keep the penalty ≤ ε.

    Use: the step's loss takes :attr:`value`; after the optimizer step, :meth:`update` gets
    the step's penalty. Under ``torch.distributed`` pass the penalty averaged over all ranks
    (the mean the engine logs), so every rank computes the same λ from the same numbers.
    The state (λ, D̄, update count) is plain Python floats and an int, so
    :meth:`state_dict` / :meth:`load_state_dict` restore it bit for bit.

    Args:
        budget: ε ≥ 0, the bound on the running mean of the penalty.
        lr: η > 0, the dual step size.
        ema: β ∈ [0, 1), the weight of the past in the running mean D̄ (0: the last penalty).
        mode: ``"additive"`` (λ + η(D̄ − ε), clipped at 0) or ``"geco"`` (λ·exp(η(D̄ − ε)),
            clipped at ``floor``).
        initial: λ before the first update; GECO needs it > 0 (a product cannot leave 0).
        floor: GECO's smallest λ, > 0 (unused by the additive form).

    Raises:
        UserError: a setting out of its range.
    """

    def __init__(
        self,
        budget: float,
        lr: float,
        ema: float = 0.9,
        mode: Mode = "additive",
        initial: float = 0.0,
        floor: float = 1e-6,
    ) -> None:
        if not (math.isfinite(budget) and budget >= 0):
            raise UserError(f"--budget must be a finite number >= 0, got {budget}")
        if not (math.isfinite(lr) and lr > 0):
            raise UserError(f"--budget-lr must be a positive number, got {lr}")
        if not 0 <= ema < 1:
            raise UserError(f"--budget-ema must be in [0, 1), got {ema}")
        if mode not in MODES:
            raise UserError(f"--budget-mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not (math.isfinite(initial) and initial >= 0):
            raise UserError(f"--budget-initial must be a finite number >= 0, got {initial}")
        if mode == "geco" and not (floor > 0 and initial >= floor):
            raise UserError(
                f"--budget-mode geco multiplies λ, so it needs 0 < floor <= initial λ; got "
                f"floor {floor}, initial {initial}"
            )
        self.budget = float(budget)
        self.lr = float(lr)
        self.ema = float(ema)
        self.mode = mode
        self.floor = float(floor)
        self.value = float(initial)
        self.running: float | None = None
        self.updates = 0

    def update(self, penalty: float) -> float:
        """Fold this step's penalty into D̄ and take one dual step; returns the new λ.

        Args:
            penalty: D_t, the step's penalty (all-reduced mean under torch.distributed).

        Raises:
            ValueError: a non-finite penalty (λ would become meaningless).
        """
        penalty = float(penalty)
        if not math.isfinite(penalty):
            raise ValueError(f"the penalty must be finite to update λ, got {penalty}")
        self.running = (
            penalty if self.running is None else self.ema * self.running + (1 - self.ema) * penalty
        )
        excess = self.running - self.budget
        if self.mode == "additive":
            self.value = max(0.0, self.value + self.lr * excess)
        else:
            self.value = max(self.floor, self.value * math.exp(self.lr * excess))
        self.updates += 1
        return self.value

    def state_dict(self) -> dict[str, float | int | None]:
        """λ, the running mean D̄ (``None`` before the first update) and the update count."""
        return {"value": self.value, "running": self.running, "updates": self.updates}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore what :meth:`state_dict` returned (the settings come from the constructor)."""
        self.value = float(state["value"])
        self.running = None if state["running"] is None else float(state["running"])
        self.updates = int(state["updates"])


SIMILARITY_PENALTIES = {"rift": "2 − 2·s", "cka": "1 − s"}
"""The regularizers whose penalty is a fixed function of a similarity s ∈ [0, 1]."""


def budget_for_similarity(regularizer: str, similarity: float) -> float:
    """ε such that ``penalty <= ε`` means ``similarity >= s`` for this regularizer.

    - ``rift`` (paired matching, ``--rift-match paired``): D = ‖ẑ − r̂Q‖²_F = 2 − 2s, s the
      Procrustes similarity (with ``q=identity`` the trace similarity), so ε = 2 − 2s.
    - ``cka``: D = 1 − CKA, so ε = 1 − s.

    Other regularizers have no similarity of fixed scale (feature distillation's penalty is
    a squared distance): give ε directly.

    Raises:
        UserError: ``similarity`` outside [0, 1], or a regularizer not listed above.
    """
    if not 0 <= similarity <= 1:
        raise UserError(f"--target-similarity must be in [0, 1], got {similarity}")
    if regularizer == "rift":
        return 2.0 - 2.0 * similarity
    if regularizer == "cka":
        return 1.0 - similarity
    raise UserError(
        f"--target-similarity applies to --reg rift (paired) and cka; --reg {regularizer} "
        "has no similarity of fixed scale: give --budget directly"
    )
