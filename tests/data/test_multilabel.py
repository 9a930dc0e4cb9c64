"""Multi-label data: a ChestMNIST-format .npz and a CSV with several 0/1 label columns.

The files are written here from BreastMNIST's real images with synthetic 3-label targets;
the model outputs come from the shipped EfficientNet-Lite0 weights.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from riftune.data import load_dataset
from riftune.data.medmnist import FLAGS, parse_flag
from riftune.data.npz import read_npz
from riftune.engine.losses import task_loss
from riftune.errors import UserError
from riftune.metrics import multilabel_accuracy, multilabel_auc
from riftune.models import build_classifier

SIZES = {"train": 40, "val": 12, "test": 24}


def _targets(n: int, labels: int, seed: int) -> np.ndarray:
    """0/1 targets with every label positive and negative at least once."""
    targets = (np.random.default_rng(seed).random((n, labels)) < 0.4).astype(np.uint8)
    targets[0], targets[1] = 1, 0
    return targets


@pytest.fixture(scope="module")
def breast(medmnist_dir: Path) -> dict[str, np.ndarray]:
    arrays = read_npz(medmnist_dir / "breastmnist.npz")
    return {split: arrays[split][0][:n] for split, n in SIZES.items()}


def _write_npz(path: Path, images: dict[str, np.ndarray], labels: int) -> dict[str, np.ndarray]:
    targets = {split: _targets(len(images[split]), labels, i) for i, split in enumerate(SIZES)}
    arrays = {f"{s}_images": images[s] for s in SIZES} | {f"{s}_labels": targets[s] for s in SIZES}
    np.savez(path, **arrays)
    return targets


def test_chestmnist_format_npz_loads_as_multilabel(tmp_path, breast):
    targets = _write_npz(tmp_path / "findings.npz", breast, labels=3)
    data = load_dataset(str(tmp_path / "findings.npz"), img_size=28)
    assert data.multilabel and data.task == "multilabel" and data.num_classes == 3
    assert data.train.multilabel and data.label_names is None
    for split in SIZES:
        np.testing.assert_array_equal(getattr(data, split).labels.numpy(), targets[split])
    image, label, _ = data.test[5]
    assert image.shape == (3, 28, 28) and label.tolist() == targets["test"][5].tolist()
    images, labels, _ = data.train.batch([3, 7])
    assert images.shape == (2, 3, 28, 28) and labels.tolist() == targets["train"][[3, 7]].tolist()


def test_a_file_named_chestmnist_gets_its_14_label_names(tmp_path, breast):
    _write_npz(tmp_path / "chestmnist.npz", breast, labels=14)
    data = load_dataset(str(tmp_path / "chestmnist.npz"), img_size=28)
    assert data.label_names == list(FLAGS["chestmnist"].labels) and data.num_classes == 14
    assert parse_flag("chestmnist_64").file_name == "chestmnist_64.npz"
    _write_npz(tmp_path / "chestmnist_64.npz", breast, labels=3)
    with pytest.raises(UserError, match="3 label columns, but this dataset has 14"):
        load_dataset(str(tmp_path / "chestmnist_64.npz"), img_size=28)


def test_loss_and_auc_of_a_real_model_on_the_file(tmp_path, breast):
    targets = _write_npz(tmp_path / "findings.npz", breast, labels=3)
    data = load_dataset(str(tmp_path / "findings.npz"), img_size=28)
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", data.num_classes).eval()
    images, labels, _ = data.test.batch(range(len(data.test)))
    with torch.no_grad():
        logits = model(images).logits.double()
    probs = torch.sigmoid(logits).numpy()
    expected_auc = roc_auc_score(targets["test"], probs, average="macro")
    assert multilabel_auc(logits, labels) == pytest.approx(expected_auc, abs=1e-12)
    expected_acc = ((probs > 0.5) == targets["test"]).mean()
    assert multilabel_accuracy(logits, labels) == pytest.approx(expected_acc, abs=1e-12)
    y = targets["test"].astype(np.float64)
    expected_loss = -np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs))
    assert task_loss(logits, labels, multilabel=True).item() == pytest.approx(expected_loss)


def test_mixed_or_non_binary_targets_are_refused(tmp_path, breast):
    _write_npz(tmp_path / "a.npz", breast, labels=3)
    arrays = dict(np.load(tmp_path / "a.npz"))
    arrays["val_labels"] = arrays["val_labels"][:, 0]
    np.savez(tmp_path / "mixed.npz", **arrays)
    with pytest.raises(UserError, match="train, test labels are multi-label"):
        load_dataset(str(tmp_path / "mixed.npz"), img_size=28)
    arrays = dict(np.load(tmp_path / "a.npz"))
    arrays["test_labels"] = arrays["test_labels"][:, :2]
    np.savez(tmp_path / "widths.npz", **arrays)
    with pytest.raises(UserError, match="different numbers of labels"):
        load_dataset(str(tmp_path / "widths.npz"), img_size=28)
    with pytest.raises(UserError, match="drop --shots"):
        load_dataset(str(tmp_path / "a.npz"), img_size=28, shots=2)


def _write_csv(root: Path, images: dict[str, np.ndarray], values=None) -> dict[str, np.ndarray]:
    targets = {split: _targets(len(images[split]), 3, i) for i, split in enumerate(SIZES)}
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "split", "effusion", "mass", "nodule"])
        for split in SIZES:
            for i, pixels in enumerate(images[split]):
                name = f"{split}_{i}.png"
                Image.fromarray(pixels).save(root / name)
                row = values if values is not None else targets[split][i].tolist()
                writer.writerow([name, split, *row])
    return targets


def test_csv_with_several_label_columns(tmp_path, breast):
    targets = _write_csv(tmp_path, breast)
    spec = f"csv:{tmp_path / 'labels.csv'}?label=effusion,mass,nodule"
    data = load_dataset(spec, img_size=28)
    assert data.multilabel and data.label_names == ["effusion", "mass", "nodule"]
    for split in SIZES:
        np.testing.assert_array_equal(getattr(data, split).labels.numpy(), targets[split])
    np.testing.assert_array_equal(data.test.images[:, 0].numpy(), breast["test"])
    by_argument = load_dataset(
        f"csv:{tmp_path / 'labels.csv'}", img_size=28, label_columns=["effusion", "mass", "nodule"]
    )
    assert torch.equal(by_argument.train.labels, data.train.labels)
    with pytest.raises(UserError, match="contradicts"):
        load_dataset(spec, img_size=28, label_columns=["mass", "nodule"])


def test_csv_label_values_other_than_0_and_1_are_refused(tmp_path, breast):
    _write_csv(tmp_path, breast, values=[1, 0, 2])
    with pytest.raises(UserError, match="line 2: 'nodule' is '2'") as err:
        load_dataset(f"csv:{tmp_path / 'labels.csv'}?label=effusion,mass,nodule", img_size=28)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no column 'edema'"):
        load_dataset(f"csv:{tmp_path / 'labels.csv'}?label=effusion,edema", img_size=28)


@pytest.mark.slow
def test_a_multilabel_npz_trains_and_evaluates_end_to_end(tmp_path, medmnist_dir):
    """`riftune finetune` on a ChestMNIST-format file (labels (N, 3) of 0/1): per-label binary
    loss, mean per-label AUC in metrics.json, no predictions.csv (single-label only)."""
    import json

    import numpy as np

    from riftune.cli import main

    source = np.load(medmnist_dir / "breastmnist.npz")
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        images = source[f"{split}_images"][:40]
        arrays[f"{split}_images"] = images
        bright = (images.reshape(len(images), -1).mean(1) > images.mean()).astype(np.uint8)
        arrays[f"{split}_labels"] = np.stack(
            [bright, source[f"{split}_labels"][:40, 0], rng.integers(0, 2, len(images))], axis=1
        )
    path = tmp_path / "chest_like.npz"
    np.savez(path, **arrays)
    out = tmp_path / "run"
    argv = ["finetune", "--data", str(path), "--epochs", "1", "--batch-size", "8",
            "--landscape-images", "8", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and "ci" not in metrics["test"]
    assert "sharpness" in metrics["test"]
    assert not (out / "predictions.csv").exists()
    assert (out / "embeddings.png").is_file()
