"""The files of one run folder, and the rules for starting, resuming or replacing a run there."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from riftune.errors import UserError


@dataclass(frozen=True)
class RunDir:
    """Paths inside ``--out``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def steps(self) -> Path:
        return self.root / "steps.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def training_plot(self) -> Path:
        return self.root / "training.png"

    @property
    def embeddings_plot(self) -> Path:
        return self.root / "embeddings.png"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def roc_plot(self) -> Path:
        return self.root / "roc.png"

    @property
    def calibration_plot(self) -> Path:
        return self.root / "calibration.png"

    @property
    def confusion_plot(self) -> Path:
        return self.root / "confusion.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def outputs(self) -> list[Path]:
        """Everything a run writes, so ``--overwrite`` removes exactly that and nothing else."""
        return [
            self.config,
            self.metrics,
            self.history,
            self.steps,
            self.checkpoints,
            self.training_plot,
            self.embeddings_plot,
            self.predictions,
            self.roc_plot,
            self.calibration_plot,
            self.confusion_plot,
            self.tensorboard,
        ]

    def is_finished(self) -> bool:
        return self.metrics.is_file()

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())


def claim(run: RunDir, resume: bool, overwrite: bool) -> None:
    """Check that a run may start in ``run`` and prepare the folder (rank 0 only).

    A finished run is never replaced without ``--overwrite``; an unfinished one needs
    ``--resume`` or ``--overwrite``; ``--resume`` needs a checkpoint. ``--overwrite`` removes
    only the files a run writes.
    """
    if resume:
        if run.is_finished():
            raise UserError(
                f"{run.root} holds a finished run; nothing to resume (pass --overwrite to "
                "run it again)"
            )
        if not run.has_checkpoints():
            raise UserError(
                f"--resume given but {run.checkpoints} holds no checkpoint; "
                "drop --resume to start a new run there"
            )
        return
    if overwrite:
        for path in run.outputs():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif run.is_finished():
        raise UserError(
            f"{run.root} already holds a finished run; pass --overwrite to replace it "
            "or choose another --out"
        )
    elif run.has_checkpoints() or run.config.exists():
        raise UserError(
            f"{run.root} holds an unfinished run; pass --resume to continue it "
            "or --overwrite to start again"
        )
    run.checkpoints.mkdir(parents=True, exist_ok=True)


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
