"""The clinical outputs of a run's evaluation, from Collected splits."""

from __future__ import annotations

import numpy as np
import torch

from riftune.metrics import Collected, bootstrap_ci
from riftune.report.predictions import read_predictions_csv
from riftune.report.run_outputs import confidence_intervals, write_clinical_outputs
from riftune.runs.folder import RunDir


def _split(n: int, seed: int) -> Collected:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g) + 2 * torch.eye(3)[labels]
    return Collected(torch.zeros(n, 4), logits, labels, torch.arange(n))


def test_outputs_are_written_where_the_run_folder_says(tmp_path):
    splits = {"test": _split(30, 0), "val": _split(12, 1)}
    written = write_clinical_outputs(tmp_path, splits, ["a", "b", "c"])
    run = RunDir(tmp_path)
    assert set(written) == {run.predictions, run.roc_plot, run.calibration_plot, run.confusion_plot}
    assert set(written) <= set(run.outputs())  # --overwrite removes them
    rows = read_predictions_csv(run.predictions)
    assert [r["split"] for r in rows] == ["test"] * 30 + ["val"] * 12
    np.testing.assert_allclose(
        [r["p_b"] for r in rows[30:]], splits["val"].logits.double().softmax(1)[:, 1], rtol=1e-6
    )


def test_intervals_per_split_use_the_seed():
    splits = {"test": _split(40, 2), "val": _split(20, 3)}
    ci = confidence_intervals(splits, seed=4, resamples=100)
    assert set(ci) == {"test", "val"}
    expected = bootstrap_ci(splits["val"].logits, splits["val"].labels, resamples=100, seed=4)
    assert ci["val"] == expected and ci["test"]["seed"] == 4
