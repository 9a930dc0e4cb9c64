r"""λ of ``loss = task + λ·penalty``: the weight schedule a train step owns and reads every step.

A fixed weight (:class:`ConstantWeight`, ``--lam``), or a similarity budget
(:class:`DualAscentWeight`, ``--budget`` / ``--target-similarity``): λ as a Lagrange multiplier
found by dual ascent. The RIFT paper (arXiv 2503.07399, its Eq. 5) starts from the constrained
problem

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
met. A penalty of fixed scale makes ε read naturally: each regularizer's
:meth:`~riftune.regularizers.Regularizer.budget_for_similarity` maps a similarity s to ε
(paired RIFT's D = 2 − 2s, the CKA penalty's D = 1 − s); for feature distillation ε is a
squared distance, given directly.

The train step reads :attr:`LossWeight.value` for its loss and calls :meth:`LossWeight.update`
with the step's penalty; the loop logs what :meth:`LossWeight.step_log` and
:meth:`LossWeight.epoch_log` say, and a checkpoint holds :meth:`LossWeight.state_dict` under
:attr:`LossWeight.checkpoint_key`. Every λ of a run lives here.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from riftune.errors import UserError

Mode = Literal["additive", "geco"]
MODES = ("additive", "geco")


class LossWeight:
    """Base class: the weight λ of the penalty, and how it changes from step to step.

    Class attributes a subclass sets:
        adapts: whether :meth:`update` changes λ (the step then hands it each step's penalty,
            averaged over all ranks).
        checkpoint_key: the key of :meth:`state_dict` in a progress checkpoint, or None for a
            weight with no state to keep.
    """

    adapts: ClassVar[bool] = False
    checkpoint_key: ClassVar[str | None] = None
    value: float | torch.Tensor

    def to(self, device: torch.device | str) -> LossWeight:
        """Keep any state on ``device``; returns self (nothing to move here)."""
        return self

    def update(self, penalty: torch.Tensor | float) -> float | torch.Tensor:
        """Take this step's penalty D_t into account; returns the next step's λ."""
        return self.value

    def step_log(self) -> dict[str, float | torch.Tensor]:
        """The columns of steps.csv this weight adds for the step just taken (none here)."""
        return {}

    def epoch_log(self) -> dict[str, float | torch.Tensor]:
        """The columns of history.csv this weight adds at an epoch's end (none here)."""
        return {}

    def state_dict(self) -> dict[str, float | int | None]:
        """What a checkpoint keeps so that λ continues exactly (nothing here)."""
        return {}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore what :meth:`state_dict` returned."""


class ConstantWeight(LossWeight):
    """A fixed λ (``--lam``): the same weight at every step, nothing logged or checkpointed.

    Args:
        value: λ ≥ 0.
    """

    def __init__(self, value: float) -> None:
        self.value = float(value)


class DualAscentWeight(LossWeight):
    """λ of ``loss = task + λ·penalty``, updated after every step to keep the penalty ≤ ε.

    Use: the step's loss takes :attr:`value`; after the optimizer step, :meth:`update` gets
    the step's penalty. Under ``torch.distributed`` pass the penalty averaged over all ranks
    (the mean the engine logs), so every rank computes the same λ from the same numbers.

    The state (λ, D̄) is float64 scalar tensors where training runs (:meth:`to`), so a step
    updates λ without waiting for the device: nothing is read back to the host until a log or
    a checkpoint asks (:meth:`state_dict`). Each update is the same float64 arithmetic as on
    Python floats (GECO's exp may differ in the last bit on a GPU), and :meth:`state_dict` /
    :meth:`load_state_dict` restore it bit for bit. A penalty given as a number is refused when
    not finite; one given as a tensor is not checked (that would wait for the device): it makes
    the step's loss non-finite, which riftune's training loop refuses (``NonFiniteLossError``).

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

    adapts = True
    checkpoint_key = "budget"

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
        self.device = torch.device("cpu")
        self._restore(float(initial), None, 0)

    def to(self, device: torch.device | str) -> DualAscentWeight:
        """Keep λ and D̄ on ``device`` (where the penalties are); returns self."""
        self.device = torch.device(device)
        self._restore(*self._floats())
        return self

    def update(self, penalty: torch.Tensor | float) -> torch.Tensor:
        """Fold this step's penalty into D̄ and take one dual step; returns the new λ.

        Args:
            penalty: D_t, the step's penalty (all-reduced mean under torch.distributed), a
                scalar tensor (it stays on its device) or a float.

        Raises:
            ValueError: a float penalty that is not finite (λ would become meaningless).
        """
        if not torch.is_tensor(penalty) and not math.isfinite(penalty):
            raise ValueError(f"the penalty must be finite to update λ, got {penalty}")
        penalty = torch.as_tensor(penalty, dtype=torch.float64, device=self.device)
        if self.running is None:
            self.running = penalty
        else:
            self.running = self.ema * self.running + (1 - self.ema) * penalty
        excess = self.running - self.budget
        self.applied = self.value
        if self.mode == "additive":
            self.value = torch.clamp_min(self.value + self.lr * excess, 0.0)
        else:
            self.value = torch.clamp_min(self.value * torch.exp(self.lr * excess), self.floor)
        self.updates += 1
        return self.value

    def step_log(self) -> dict[str, torch.Tensor]:
        """``lam``, the λ that weighed the step's penalty, and ``reg_mean``, D̄ after it (scalar
        tensors: the loop reads them back in chunks)."""
        return {"lam": self.applied, "reg_mean": self.running}

    def epoch_log(self) -> dict[str, torch.Tensor]:
        """``lam``: λ at the epoch's end (the next step's)."""
        return {"lam": self.value}

    def state_dict(self) -> dict[str, float | int | None]:
        """λ, the running mean D̄ (``None`` before the first update) and the update count."""
        value, running, updates = self._floats()
        return {"value": value, "running": running, "updates": updates}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore what :meth:`state_dict` returned (the settings come from the constructor)."""
        self._restore(float(state["value"]), state["running"], int(state["updates"]))

    def _floats(self) -> tuple[float, float | None, int]:
        running = None if self.running is None else float(self.running)
        return float(self.value), running, self.updates

    def _restore(self, value: float, running: float | None, updates: int) -> None:
        def scalar(x: float) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.float64, device=self.device)

        self.value = scalar(value)
        self.running = None if running is None else scalar(running)
        self.updates = updates
        self.applied = self.value
