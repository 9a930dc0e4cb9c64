"""Experiment trackers a run writes to as it trains (``--logger tensorboard,wandb,mlflow``).

Each logger takes the same values: the run's configuration once, when it opens, then
``log_scalars(step, {"train/loss": ..., "val/auc": ...})`` for every training step and epoch and
the test scalars at the end. Each imports its package when it is created, so riftune runs
without them unless a logger is asked for.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any, Protocol

import yaml

from riftune.errors import UserError
from riftune.runs.folder import RunDir


class Logger(Protocol):
    def log_scalars(self, step: int, scalars: Mapping[str, object]) -> None: ...

    def close(self) -> None: ...


def real_scalars(scalars: Mapping[str, object]) -> dict[str, float]:
    """The real numbers of ``scalars`` as floats; strings, ``None`` and bools are left out."""
    return {
        tag: float(value)
        for tag, value in scalars.items()
        if isinstance(value, Real) and not isinstance(value, bool)
    }


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested configuration as ``{"training.lr": 0.001, ...}`` (trackers' parameters)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_loggers(
    names: tuple[str, ...],
    run_dir: RunDir,
    config: Mapping[str, Any],
    resume_step: int | None,
) -> list[Logger]:
    """The loggers ``names`` for a run in ``run_dir``.

    Args:
        names: a subset of :data:`~riftune.config.sections.LOGGERS`.
        run_dir: the run's folder; the trackers' local files go there.
        config: the run's configuration, nested as in config.yaml.
        resume_step: the checkpoint's global step G when the run resumes (None: a new run):
            TensorBoard drops what a crashed run logged after G, W&B and MLflow continue the
            run they logged to before.
    """
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            purge = None if resume_step is None else resume_step + 1
            loggers.append(TensorBoardLogger(run_dir.tensorboard, purge_step=purge, config=config))
        elif name == "wandb":
            loggers.append(WandbLogger(run_dir, config, resume=resume_step is not None))
        elif name == "mlflow":
            loggers.append(MLflowLogger(run_dir, config, resume=resume_step is not None))
        else:
            raise ValueError(f"unknown logger {name!r}")
    return loggers


def _missing(tracker: str, extra: str) -> UserError:
    return UserError(f"{tracker} logging needs the {extra} package: pip install riftune[{extra}]")


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (``tensorboard --logdir log_dir``).

    Resume-safe: a crashed run may have logged steps after its last checkpoint. Reopen with
    ``purge_step = G + 1``, G the checkpoint's global step, and TensorBoard drops the events of
    steps ≥ G + 1 written before the crash, so the replayed steps are not shown twice.

    Args:
        log_dir: folder of the event files (created if missing).
        purge_step: hide earlier events at this step and later (``None``: a new run).
        config: the run's configuration, written once as the text ``config`` (YAML).

    Raises:
        UserError: the ``tensorboard`` package is not installed.
    """

    def __init__(
        self,
        log_dir: str | Path,
        purge_step: int | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("TensorBoard", "tensorboard") from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if config is not None:
            text = yaml.safe_dump(dict(config), sort_keys=False)
            self._writer.add_text("config", f"```yaml\n{text}```")

    def log_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        """Log every real number of ``scalars`` at ``step`` (tags as given, e.g. ``train/loss``);
        other values (strings, ``None``, bools) are skipped. Flushed, so TensorBoard shows them
        at once."""
        for tag, value in real_scalars(scalars).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WandbLogger:
    """Scalars and the configuration to a Weights & Biases run, its local files in OUT/wandb.

    The project is ``$WANDB_PROJECT`` (default ``riftune``); ``WANDB_MODE=offline`` keeps the
    run on disk (``wandb sync OUT/wandb/offline-run-*`` uploads it later). The run's id is kept
    in OUT/wandb/run-id, so a resumed riftune run continues the same W&B run (W&B ignores the
    replayed steps it already has).

    Raises:
        UserError: the ``wandb`` package is not installed.
    """

    def __init__(self, run_dir: RunDir, config: Mapping[str, Any], resume: bool):
        try:
            import wandb
        except ImportError:
            raise _missing("W&B", "wandb") from None
        run_dir.wandb.mkdir(parents=True, exist_ok=True)
        run_id = _run_id(run_dir.wandb / "run-id", resume, lambda: uuid.uuid4().hex[:8])
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "riftune"),
            dir=str(run_dir.root),
            id=run_id,
            name=run_dir.root.name,
            config=dict(config),
            resume="allow",
        )

    def log_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        self._run.log(real_scalars(scalars), step=step)

    def close(self) -> None:
        self._run.finish()


class MLflowLogger:
    """Scalars as metrics and the flattened configuration as parameters of an MLflow run.

    The store is ``$MLFLOW_TRACKING_URI``, else the file store OUT/mlruns (what mlflow-skinny
    writes without a database server; ``MLFLOW_ALLOW_FILE_STORE`` is set for it), the
    experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``riftune``). The run's id is kept in
    OUT/mlruns/run-id, so a resumed riftune run continues the same MLflow run.

    Raises:
        UserError: the ``mlflow`` package is not installed.
    """

    def __init__(self, run_dir: RunDir, config: Mapping[str, Any], resume: bool):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("MLflow", "mlflow") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = run_dir.mlruns.resolve().as_uri()
        self._client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "riftune")
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else None
        if experiment_id is None:
            experiment_id = self._client.create_experiment(name)

        def new_run() -> str:
            run = self._client.create_run(experiment_id, run_name=run_dir.root.name)
            params = [Param(k, str(v)) for k, v in flat_config(config).items()]
            self._client.log_batch(run.info.run_id, params=params)
            return run.info.run_id

        run_dir.mlruns.mkdir(parents=True, exist_ok=True)
        self.run_id = _run_id(run_dir.mlruns / "run-id", resume, new_run)

    def log_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in real_scalars(scalars).items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def _run_id(path: Path, resume: bool, new) -> str:
    """The tracker's run id stored in ``path`` when resuming, else a new one (stored)."""
    if resume and path.is_file():
        return path.read_text().strip()
    run_id = new()
    path.write_text(run_id + "\n")
    return run_id
