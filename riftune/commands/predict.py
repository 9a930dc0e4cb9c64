"""``riftune predict``: class probabilities of a finished run's best model on new images.

New images come in any form ``--data`` takes (:mod:`riftune.data.formats`; each format's
module says which images it reads, how its rows are keyed and where labels come from), and
are preprocessed exactly as the run's own data: resized once to the run's ``--img-size`` and
normalized with the backbone's mean and standard deviation. The output is a predictions CSV
(:mod:`riftune.report.predictions`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from riftune.commands.evaluate import FinishedRun, load_finished_run
from riftune.data import ImageTensorDataset, eval_loader, load_new_images
from riftune.errors import UserError
from riftune.metrics import collect
from riftune.report.predictions import write_predictions_csv


def predict_run(
    run_dir: str | Path,
    data: str | Path,
    out_csv: str | Path,
    batch_size: int = 128,
    device: str = "auto",
) -> Path:
    """Predict ``data`` with the run's best checkpoint and write ``out_csv``.

    Args:
        run_dir: a finished run folder.
        data: new images in any form ``--data`` takes (see the module docs).
        out_csv: the predictions CSV to write (its folder must exist).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``out_csv``.

    Raises:
        UserError: not a finished run, unreadable data, labels that are not the run's classes.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    out_csv = Path(out_csv)
    if out_csv.is_dir() or not out_csv.parent.is_dir():
        raise UserError(f"--out {out_csv} must be a file in an existing folder")
    return predict_loaded(load_finished_run(run_dir, device), data, out_csv, batch_size)


def predict_loaded(run: FinishedRun, data: str | Path, out_csv: Path, batch_size: int) -> Path:
    """:func:`predict_run` with the run already rebuilt (:func:`load_finished_run`)."""
    class_names, data_config = run.data.class_names, run.config.data
    images = load_new_images(
        str(data), data_config.img_size, class_names, run.data.num_classes, data_config.data_root
    )
    cfg = run.model.pretrained_cfg
    labels = images.labels if images.labels is not None else np.zeros(len(images.pixels))
    dataset = ImageTensorDataset(
        images.pixels, torch.from_numpy(labels).long(), tuple(cfg["mean"]), tuple(cfg["std"])
    )
    out = collect(
        run.model, eval_loader(dataset, batch_size, run.ctx), run.ctx.device, run.amp_dtype
    )
    if run.ctx.is_main:
        write_predictions_csv(out_csv, out.logits, images.keys, class_names, images.labels)
    return out_csv


def predict_command(
    run: str, data: str, out: str, batch_size: int = 128, device: str = "auto"
) -> int:
    """``riftune predict --run DIR --data X --out FILE [--batch-size N] [--device D]``."""
    written = predict_run(run, data, out, batch_size, device)
    print(f"wrote {written}")
    return 0
