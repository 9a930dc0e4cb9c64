"""Group splits: every image of a patient lands in one split, seeded, near the fractions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from riftune.data.csv_table import read_csv_table
from riftune.data.splits import grouped_holdout
from riftune.errors import UserError


def _patients(seed: int, n_patients: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """1 to 6 images per patient; a patient's label is mostly, not always, the same."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_patients)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], sizes)
    base = np.repeat(rng.choice(3, n_patients, p=[0.6, 0.3, 0.1]), sizes)
    flip = rng.random(len(base)) < 0.1
    return np.where(flip, rng.integers(0, 3, len(base)), base), groups


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), fraction=st.sampled_from([0.1, 0.2, 0.3, 0.5]))
def test_no_group_is_split_and_the_split_is_a_partition(seed, fraction):
    labels, groups = _patients(seed % 1000)
    kept, held = grouped_holdout(labels, groups, fraction, seed)
    assert not set(groups[kept]) & set(groups[held])
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_each_label_is_held_out_near_the_fraction(fraction):
    labels, groups = _patients(0, n_patients=400)
    _, held = grouped_holdout(labels, groups, fraction, seed=1)
    assert len(held) / len(labels) == pytest.approx(fraction, abs=0.02)
    for label in range(3):  # stratified: each label's share of the hold-out is near its own
        share = np.mean(labels[held] == label)
        assert share == pytest.approx(np.mean(labels == label), abs=0.05)


def test_the_split_depends_on_the_seed_only():
    labels, groups = _patients(3)
    first = grouped_holdout(labels, groups, 0.2, seed=5)
    again = grouped_holdout(labels, groups, 0.2, seed=5)
    other = grouped_holdout(labels, groups, 0.2, seed=6)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_singleton_groups_hold_out_the_exact_share_and_one_group_is_kept():
    labels, groups = np.zeros(50, dtype=np.int64), np.arange(50)
    assert len(grouped_holdout(labels, groups, 0.2, seed=0)[1]) == 10
    kept, held = grouped_holdout(np.zeros(4, dtype=np.int64), np.zeros(4), 0.5, seed=0)
    assert len(held) == 0 and len(kept) == 4


def _table(root: Path, rows: list[list], header: list[str]) -> Path:
    for name in {row[0] for row in rows}:
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(root / name)
    with (root / "t.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return root / "t.csv"


def test_csv_without_a_split_column_keeps_each_patient_in_one_split(tmp_path):
    labels, groups = _patients(7, n_patients=150)
    names = ["nevus", "melanoma", "bcc"]
    # each patient's rows show the patient's own image file, so a split's paths name its patients
    rows = [[f"{g}.png", names[y], g] for y, g in zip(labels, groups, strict=True)]
    file = _table(tmp_path, rows, ["image", "dx", "patient_id"])
    table = read_csv_table(file, {"group": "patient_id"})
    patients = {split: {path.stem for path in table.paths[split]} for split in table.paths}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    counts = {split: len(table.paths[split]) for split in table.paths}
    assert sum(counts.values()) == len(rows)
    assert counts["test"] / len(rows) == pytest.approx(0.2, abs=0.03)
    assert counts["val"] / len(rows) == pytest.approx(0.08, abs=0.03)  # 0.1 of the other 0.8
    again = read_csv_table(file, {"group": "patient_id"})
    assert again.paths == table.paths
    reseeded = read_csv_table(file, {"group": "patient_id", "split_seed": "1"})
    assert reseeded.paths["test"] != table.paths["test"]
    assert table.class_names == sorted(names)


def test_one_hot_labels_beside_a_group_column(tmp_path):
    rows = [[f"p{i // 2}.png", int(i % 3 == 0), int(i % 3 != 0), f"p{i // 2}"] for i in range(40)]
    file = _table(tmp_path, rows, ["image", "MEL", "NV", "lesion_id"])
    table = read_csv_table(file, {"group": "lesion_id"})
    assert table.class_names == ["MEL", "NV"]
    patients = {split: {path.stem for path in table.paths[split]} for split in table.paths}
    assert not patients["train"] & patients["test"]


def test_a_given_split_column_that_splits_a_patient_is_refused(tmp_path):
    rows = [["x.png", 0, "a", "train"], ["x.png", 1, "a", "test"], ["x.png", 1, "b", "train"]]
    file = _table(tmp_path, rows, ["image", "label", "patient", "split"])
    with pytest.raises(UserError, match="group 'a' has rows in both train and test"):
        read_csv_table(file, {"group": "patient"})
    with pytest.raises(UserError, match="no column 'subject'"):
        read_csv_table(file, {"group": "subject"})


def test_multilabel_rows_are_held_out_as_one_stratum():
    targets = (np.arange(150).reshape(50, 3) % 4 == 0).astype(np.int64)
    kept, held = grouped_holdout(targets, np.arange(50), 0.2, seed=0)
    assert len(held) == 10 and len(kept) == 40
