"""predictions.csv: written from logits, read back exactly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from riftune.report.predictions import (
    read_predictions_csv,
    write_predictions_csv,
    write_split_predictions,
)


def test_split_predictions_read_back(tmp_path):
    rng = np.random.default_rng(0)
    test_logits, val_logits = rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
    path = tmp_path / "predictions.csv"
    write_split_predictions(
        path,
        {
            "test": (torch.from_numpy(test_logits), torch.tensor([0, 1, 2, 1, 0]), torch.arange(5)),
            "val": (torch.from_numpy(val_logits), torch.tensor([2, 2]), torch.tensor([0, 1])),
        },
        class_names=["normal", "benign", "malignant"],
    )
    with path.open() as handle:
        header = next(csv.reader(handle))
    assert header == ["split", "index", "label", "predicted", "p_normal", "p_benign", "p_malignant"]
    rows = read_predictions_csv(path)
    assert [(r["split"], r["index"], r["label"]) for r in rows] == [
        ("test", 0, 0), ("test", 1, 1), ("test", 2, 2), ("test", 3, 1), ("test", 4, 0),
        ("val", 0, 2), ("val", 1, 2),
    ]  # fmt: skip
    logits = np.concatenate([test_logits, val_logits])
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = np.array([[r["p_normal"], r["p_benign"], r["p_malignant"]] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    assert [r["predicted"] for r in rows] == logits.argmax(1).tolist()


def test_unlabelled_images_and_unnamed_classes(tmp_path):
    path = tmp_path / "p.csv"
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    write_predictions_csv(path, logits, {"file": ["a.png", "b/c.png"]})
    rows = read_predictions_csv(path)
    assert list(rows[0]) == ["file", "predicted", "p_0", "p_1"]
    assert [r["file"] for r in rows] == ["a.png", "b/c.png"]
    assert [r["predicted"] for r in rows] == [1, 0]
    assert rows[0]["p_1"] == pytest.approx(
        float(torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)))
    )


def test_mismatched_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="file"):
        write_predictions_csv(tmp_path / "p.csv", torch.zeros(2, 2), {"file": ["a"]})
    with pytest.raises(ValueError, match="class names"):
        write_predictions_csv(tmp_path / "p.csv", torch.zeros(1, 2), {"i": [0]}, ["a", "b", "c"])
