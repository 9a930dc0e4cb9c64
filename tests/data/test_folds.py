"""Cross-validation folds over train + val: stratified, grouped, a partition without leakage,
and the test split never read (riftune tune's trials)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from riftune.cli import main
from riftune.data import load_dataset
from riftune.data.folds import CrossValidation, fold_positions, pool_fold
from riftune.data.stored import ImageArray, ImageFiles
from riftune.errors import UserError


def _all_folds(labels, folds, seed=0, groups=None):
    return [fold_positions(labels, CrossValidation(folds, i, seed), groups) for i in range(folds)]


def test_each_fold_keeps_the_class_proportions():
    labels = np.array([0] * 30 + [1] * 12 + [2] * 6)  # per fold of 3: 10, 4 and 2
    for train, val in _all_folds(labels, 3, seed=4):
        np.testing.assert_array_equal(np.bincount(labels[val]), [10, 4, 2])
        np.testing.assert_array_equal(np.bincount(labels[train]), [20, 8, 4])


def test_the_folds_partition_the_pool_and_train_never_meets_val():
    labels = np.random.default_rng(0).integers(0, 2, 101)
    folds = _all_folds(labels, 5, seed=1)
    vals = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(vals), np.arange(101))  # each item validates once
    for train, val in folds:
        assert not set(train) & set(val)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(101))


def test_a_group_stays_in_one_fold():
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 6, 60)
    groups = np.repeat([f"patient{i}" for i in range(60)], sizes)
    labels = np.repeat(rng.integers(0, 2, 60), sizes)
    folds = _all_folds(labels, 4, seed=3, groups=groups)
    fold_of = {}
    for index, (train, val) in enumerate(folds):
        assert not set(groups[train]) & set(groups[val])
        for group in set(groups[val]):
            assert fold_of.setdefault(group, index) == index
    assert len(fold_of) == 60
    for _, val in folds:  # still stratified by label, near the pool's share of positives
        assert np.mean(labels[val]) == pytest.approx(np.mean(labels), abs=0.12)


def test_the_folds_depend_on_the_seed_only():
    labels = np.random.default_rng(0).integers(0, 2, 40)
    first = fold_positions(labels, CrossValidation(4, 2, seed=7))
    np.testing.assert_array_equal(first[1], fold_positions(labels, CrossValidation(4, 2, 7))[1])
    assert not np.array_equal(first[1], fold_positions(labels, CrossValidation(4, 2, 8))[1])


def test_folds_that_cannot_see_every_class_are_refused():
    with pytest.raises(UserError, match=r"class 1 has only 2 images.*at most 2"):
        fold_positions(np.array([0] * 10 + [1] * 2), CrossValidation(3))
    with pytest.raises(UserError, match="class 1 has only 2 groups"):
        groups = np.array(list("apbqcpdq"))  # class 1: 4 images of 2 patients, p and q
        fold_positions(np.array([0, 1] * 4), CrossValidation(3), groups)
    with pytest.raises(UserError, match="not one of the 3 folds"):
        CrossValidation(3, 3)


def test_pooling_keeps_items_and_labels_together():
    labels = {"train": np.array([0, 1, 0, 1, 0, 1]), "val": np.array([1, 0, 1, 0]),
              "test": np.array([9])}  # fmt: skip
    names = {"train": [f"t{i}" for i in range(6)], "val": [f"v{i}" for i in range(4)]}
    files = {split: ImageFiles([Path(n) for n in names[split]]) for split in names}
    files["test"] = ImageFiles([Path("never-read")])
    arrays = {"train": ImageArray(np.arange(6) * 10), "val": ImageArray(100 + np.arange(4))}
    fold_files, fold_labels = pool_fold(CrossValidation(2, 1), files, labels)
    fold_arrays, same_labels = pool_fold(CrossValidation(2, 1), arrays, labels)
    assert set(fold_labels) == set(fold_files) == {"train", "val"}
    assert all(np.array_equal(fold_labels[s], same_labels[s]) for s in fold_labels)
    pool = dict(zip(names["train"] + names["val"], [*labels["train"], *labels["val"]], strict=True))
    fold_names = {split: [p.name for p in fold_files[split].paths] for split in fold_files}
    for split in ("train", "val"):
        assert [pool[name] for name in fold_names[split]] == fold_labels[split].tolist()
    assert sorted(fold_names["train"] + fold_names["val"]) == sorted(pool)
    ids = [f"t{v // 10}" if v < 100 else f"v{v - 100}" for v in fold_arrays["val"].array]
    assert ids == fold_names["val"]


def _csv_dataset(folder, unreadable_test: bool):
    """24 train, 8 val (split column) and 6 test images of two patients' worth per class."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 24), ("val", 8), ("test", 6)):
        for i in range(count):
            name = f"{split}{i}.png"
            label = i % 2
            if split == "test" and unreadable_test:
                (folder / name).write_bytes(b"not an image")
            else:
                pixels = rng.integers(0, 120, (20, 20), dtype=np.uint8) + 120 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
            rows.append(
                {"image": name, "label": label, "split": split, "patient": f"{split}{i // 2}"}
            )
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "labels.csv"


FAST = ["--img-size", "32", "--epochs", "1", "--batch-size", "8", "--landscape-images", "0",
        "--bootstrap-resamples", "0", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_a_fold_run_never_reads_the_test_images(tmp_path, capsys):
    table = _csv_dataset(tmp_path / "data", unreadable_test=True)
    data = ["--data", f"csv:{table}", "--group-column", "patient"]
    assert main(["finetune", *data, *FAST, "--out", str(tmp_path / "plain")]) == 2
    assert "cannot read image" in capsys.readouterr().err  # the test images are unreadable
    out = tmp_path / "fold"
    cv = ["--cv-folds", "4", "--cv-fold", "1", "--cv-seed", "3"]
    assert main(["finetune", *data, *FAST, *cv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and 0 <= metrics["val"]["auc"] <= 1
    assert (
        main(["evaluate", "--run", str(out), "--quiet"]) == 0
    )  # and re-evaluated without test too
    # riftune tune's seed trials keep train and val as given and leave test unread too
    unread = tmp_path / "no-test"
    assert main(["finetune", *data, *FAST, "--no-test-split", "--out", str(unread)]) == 0
    assert "test" not in json.loads((unread / "metrics.json").read_text())
    splits = load_dataset(
        f"csv:{table}", img_size=32, group_column="patient", cv=CrossValidation(4, 1, 3)
    )
    assert splits.test is None and len(splits.train) + len(splits.val) == 32
    assert len(splits.val) == 8  # 16 patients of two images, 4 per fold


def test_an_npz_fold_never_loads_the_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
              for s, n in (("train", 12), ("val", 6))}  # fmt: skip
    arrays |= {"train_labels": np.arange(12) % 2, "val_labels": np.arange(6) % 2}
    arrays |= {"test_images": np.zeros((3, 8, 8), np.float32), "test_labels": np.zeros(3)}
    np.savez(tmp_path / "broken_test.npz", **arrays)
    path = str(tmp_path / "broken_test.npz")
    with pytest.raises(UserError, match="test"):  # float images: refused when read
        load_dataset(path, img_size=8)
    splits = load_dataset(path, img_size=8, cv=CrossValidation(3, 0))
    assert splits.test is None
    assert (len(splits.train), len(splits.val)) == (12, 6)
    np.testing.assert_array_equal(np.bincount(splits.val.labels.numpy()), [3, 3])
    # without folds (riftune tune's seed trials: --no-test-split) train and val stay as given
    kept = load_dataset(path, img_size=8, test=False)
    assert kept.test is None
    np.testing.assert_array_equal(kept.val.labels.numpy(), arrays["val_labels"])


@pytest.mark.slow
def test_a_fold_of_breastmnist_with_shots(tmp_path, medmnist_dir, monkeypatch):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    splits = load_dataset("breastmnist", shots=10, seed=1, img_size=28, cv=CrossValidation(3, 2))
    whole = load_dataset("breastmnist", img_size=28)
    assert splits.test is None
    assert len(splits.train) + len(splits.val) == 20 + len(whole.val)  # shots + all of val
    assert len(splits.val) == pytest.approx((20 + len(whole.val)) / 3, abs=1)
    out = tmp_path / "run"
    flags = ["--data", "breastmnist", "--shots", "10", "--seed", "1", "--cv-folds", "3",
             "--cv-fold", "2", *FAST]  # fmt: skip
    assert main(["finetune", *flags, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test" not in metrics and "robust" not in metrics
    assert {"auc", "cka", "acc"} <= set(metrics["val"])
    val_rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(val_rows) == len(splits.val)
    assert all(row.split(",")[0] == "val" for row in val_rows)
    # the commands that read a finished run take a fold run too
    assert main(["wise-ft", "--run", str(out), "--alphas", "0,1"]) == 0
    rows = json.loads((out / "wise_ft.json").read_text())["alphas"]
    assert rows[1]["val.auc"] == pytest.approx(metrics["val"]["auc"])
    assert not any(key.startswith("test") for row in rows for key in row)
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "m.safetensors")]) == 0


def test_cv_flags_are_checked(tmp_path, capsys):
    base = ["finetune", "--data", "breastmnist", "--out", str(tmp_path / "x")]
    assert main([*base, "--cv-fold", "2"]) == 2
    assert "--cv-fold and --cv-seed choose a fold of --cv-folds K" in capsys.readouterr().err
    assert main([*base, "--cv-folds", "3", "--cv-fold", "3"]) == 2
    assert "--cv-fold 3 is not one of the 3 folds" in capsys.readouterr().err
    assert main([*base, "--cv-folds", "3", "--robustness"]) == 2
    assert "--robustness evaluates on the test split" in capsys.readouterr().err
