"""What a run writes besides checkpoints: the live logs while it trains, and the figures, the
per-image and the clinical outputs of its final evaluation. Only the main rank writes."""

from __future__ import annotations

from riftune import distributed, report
from riftune.config import RunConfig
from riftune.engine.checkpointer import TrainState
from riftune.engine.evaluation import FinalEvaluation, PretrainedEmbeddings
from riftune.engine.loggers import open_loggers
from riftune.report.history import AppendingCSV
from riftune.report.run_outputs import write_clinical_outputs
from riftune.runs.folder import RunDir


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
        self.step_rows = AppendingCSV(run_dir.steps, state.steps)
        resume_step = state.global_step or None
        self.loggers = open_loggers(config.output.loggers, run_dir, config.to_dict(), resume_step)

    def steps(self, rows: list[dict]) -> None:
        """Append steps' rows (numbers) to steps.csv in one write, and log each to the trackers."""
        if not self.enabled:
            return
        self.step_rows.extend(rows)
        for row in rows:
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
        """Log the test scalars of ``metrics`` (none in a cross-validation fold run) and close
        the trackers."""
        if not self.enabled:
            return
        test = {f"test/{k}": v for k, v in metrics.get("test", {}).items() if isinstance(v, float)}
        for logger in self.loggers:
            logger.log_scalars(max(len(self.step_rows.rows), 1), test)
            logger.close()


def write_evaluation_outputs(run_dir: RunDir, final: FinalEvaluation, data) -> None:
    """predictions.csv (validation and test), roc.png, calibration.png and confusion.png of the
    test split (of validation in a cross-validation fold run, which has no test); for
    multi-label tasks predictions.csv alone is not defined yet, so none."""
    if data.multilabel:
        return
    if final.test is None:
        splits, shown = {"val": final.val.collected}, "val"
    else:
        splits, shown = {"test": final.test.collected, "val": final.val.collected}, "test"
    write_clinical_outputs(run_dir.root, splits, data.class_names, figures_split=shown)


def write_figures(
    run_dir: RunDir,
    history: list[dict],
    final: FinalEvaluation,
    pretrained: PretrainedEmbeddings,
    data,
) -> None:
    """training.png from the per-epoch ``history``, and embeddings.png: the test split's (a
    cross-validation fold's: the validation split's) pretrained and finetuned embeddings side by
    side, coloured by class (multi-label tasks: by how many labels an image has)."""
    shown, pretrained_shown = (
        (final.val, pretrained.val) if final.test is None else (final.test, pretrained.test)
    )
    report.plot_training(history, run_dir.training_plot)
    labels, names = shown.collected.labels, data.class_names
    if data.multilabel:
        labels = labels.sum(1)
        names = [f"{k} positive labels" for k in range(data.num_classes + 1)]
    report.plot_embeddings(
        pretrained_shown.embeddings.numpy(),
        shown.collected.embeddings.numpy(),
        labels.numpy(),
        run_dir.embeddings_plot,
        class_names=names,
        cka=shown.cka,
    )
