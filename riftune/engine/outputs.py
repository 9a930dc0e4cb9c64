"""What a run writes besides checkpoints: the live logs while it trains, and the per-image and
clinical outputs of its final evaluation. Only the main rank writes."""

from __future__ import annotations

from riftune import distributed
from riftune.budget import DualAscentWeight
from riftune.config import RunConfig
from riftune.engine.checkpointer import TrainState
from riftune.engine.evaluation import FinalEvaluation
from riftune.engine.loggers import open_loggers
from riftune.report.history import AppendingCSV
from riftune.report.run_outputs import write_clinical_outputs
from riftune.runs.folder import RunDir


def budget_weight(config: RunConfig) -> DualAscentWeight | None:
    """λ as a Lagrange multiplier when the run has a similarity budget, else None."""
    if not config.budget.active:
        return None
    budget = config.budget
    return DualAscentWeight(
        config.epsilon, budget.lr, ema=budget.ema, mode=budget.mode, initial=config.initial_lam
    )


class LiveOutputs:
    """history.csv and steps.csv appended as training goes, and the trackers of ``--logger``
    (the configuration once, then the same step and epoch values), so a long run can be
    watched; after a resume the files hold exactly the rows of the checkpoint it resumed from,
    then grow again."""

    def __init__(
        self,
        run_dir: RunDir,
        config: RunConfig,
        ctx: distributed.DistributedContext,
        state: TrainState,
    ):
        self.enabled = ctx.is_main
        if not self.enabled:
            return
        self.history = AppendingCSV(run_dir.history, state.history)
        self.steps = AppendingCSV(run_dir.steps, state.steps)
        resume_step = state.global_step or None
        self.loggers = open_loggers(config.output.loggers, run_dir, config.to_dict(), resume_step)

    def step(self, row: dict) -> None:
        if not self.enabled:
            return
        self.steps.append(row)
        scalars = {f"train/{k}": v for k, v in row.items() if k != "step"}
        for logger in self.loggers:
            logger.log_scalars(row["step"], scalars)

    def epoch(self, row: dict, global_step: int) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        scalars = {k.replace("val_", "val/", 1): v for k, v in row.items() if k != "epoch"}
        for logger in self.loggers:
            logger.log_scalars(global_step, scalars)

    def close(self, metrics: dict) -> None:
        """Log the test scalars of ``metrics`` and close the trackers."""
        if not self.enabled:
            return
        test = {f"test/{k}": v for k, v in metrics["test"].items() if isinstance(v, float)}
        for logger in self.loggers:
            logger.log_scalars(max(len(self.steps.rows), 1), test)
            logger.close()


def write_evaluation_outputs(run_dir: RunDir, final: FinalEvaluation, data) -> None:
    """predictions.csv (validation and test), roc.png, calibration.png and confusion.png of the
    test split; for multi-label tasks predictions.csv alone is not defined yet, so none."""
    if data.multilabel:
        return
    splits = {"test": final.test.collected, "val": final.val.collected}
    write_clinical_outputs(run_dir.root, splits, data.class_names)
