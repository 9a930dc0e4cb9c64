"""Datasets of image files: imagefolder: and csv: specs, on tiny PNG/JPEG files written here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from riftune.data import load_dataset
from riftune.errors import UserError

SIZE = 12


def _png(path: Path, seed: int, mode: str = "RGB", shape: tuple[int, int] = (20, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(
        0, 256, (shape[1], shape[0], 3) if mode == "RGB" else (shape[1], shape[0]), dtype=np.uint8
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _reference(path: Path) -> np.ndarray:
    """Independent pipeline: PIL decode, RGB, bilinear resize, (x/255 - 0.5)/0.5, CHW."""
    resized = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return (np.asarray(resized, dtype=np.float64).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5


def _folder(
    root: Path, splits=("train", "val", "test"), classes=("cat", "bird", "ant"), per_class=3
) -> Path:
    seed = 0
    for split in splits:
        for name in classes:
            for k in range(per_class):
                seed += 1
                _png(root / split / name / f"{k}.png", seed, mode="L" if name == "bird" else "RGB")
    return root


def _refused(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        load_dataset(spec, img_size=SIZE)
    assert "\n" not in str(err.value)


def test_imagefolder_loads_sorted_classes_and_mixed_modes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "derm")
    data = load_dataset(f"imagefolder:{root}", img_size=SIZE)
    assert data.class_names == ["ant", "bird", "cat"]
    assert (data.num_classes, data.task, data.name) == (3, "multiclass", "derm")
    assert (len(data.train), len(data.val), len(data.test)) == (9, 9, 9)
    files = sorted((root / "test").rglob("*.png"))
    for i, path in enumerate(files):
        image, label, index = data.test[i]
        assert data.class_names[int(label)] == path.parent.name and int(index) == i
        np.testing.assert_allclose(image.numpy(), _reference(path), atol=1e-5)


def test_imagefolder_without_val_holds_out_a_seeded_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", splits=("train", "test"), classes=("a", "b"), per_class=10)
    first = load_dataset(f"imagefolder:{root}", img_size=SIZE)
    again = load_dataset(f"imagefolder:{root}", img_size=SIZE, seed=5)  # training seed: no effect
    other = load_dataset(f"imagefolder:{root}?val=0.3&split_seed=1", img_size=SIZE)
    assert (len(first.train), len(first.val)) == (18, 2)
    assert (len(other.train), len(other.val)) == (14, 6)
    assert sorted(first.val.labels.tolist()) == [0, 1]
    assert torch.equal(first.val.images, again.val.images)
    all_train = {bytes(img.numpy()) for img in first.train.images} | {
        bytes(img.numpy()) for img in first.val.images
    }
    assert len(all_train) == 20


def test_imagefolder_errors(tmp_path: Path) -> None:
    _refused(f"imagefolder:{tmp_path / 'missing'}", "does not exist")
    _refused(f"imagefolder:{_folder(tmp_path / 'a', splits=('train', 'val'))}", "no test/ folder")
    mismatch = _folder(tmp_path / "b")
    (mismatch / "val" / "zebra").mkdir()
    _png(mismatch / "val" / "zebra" / "z.png", 99)
    _refused(f"imagefolder:{mismatch}", r"val/ differs from train/.*zebra")
    lacking = _folder(tmp_path / "c")
    for file in (lacking / "test" / "ant").iterdir():
        file.unlink()
    (lacking / "test" / "ant").rmdir()
    _refused(f"imagefolder:{lacking}", r"missing: \['ant'\]")
    empty = _folder(tmp_path / "d")
    for file in (empty / "val" / "cat").iterdir():
        file.unlink()
    _refused(f"imagefolder:{empty}", "val/cat holds no images")
    _refused(f"imagefolder:{_folder(tmp_path / 'e', classes=('only',))}", "need at least 2")
    broken = _folder(tmp_path / "f")
    (broken / "train" / "cat" / "0.png").write_bytes(b"not a png")
    _refused(f"imagefolder:{broken}", "cannot read image")
    _refused(f"imagefolder:{_folder(tmp_path / 'g')}?color=1", "unknown imagefolder option")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_with_class_names_and_split_column(tmp_path: Path) -> None:
    rows = []
    for i in range(12):
        split = ("train", "Validation", "TEST")[i % 3]
        _png(tmp_path / "imgs" / f"{i}.jpg", i)
        rows.append([f"imgs/{i}.jpg", ("nevus", "melanoma")[i % 2], split])
    _write_csv(tmp_path / "labels.csv", ["Path", "Diagnosis", "Split"], rows)
    data = load_dataset(f"csv:{tmp_path / 'labels.csv'}", img_size=SIZE)
    assert data.class_names == ["melanoma", "nevus"] and data.task == "binary"
    assert (len(data.train), len(data.val), len(data.test)) == (4, 4, 4)
    image, label, _ = data.val[1]  # row 4: imgs/4.jpg, nevus
    assert data.class_names[int(label)] == "nevus"
    np.testing.assert_allclose(image.numpy(), _reference(tmp_path / "imgs" / "4.jpg"), atol=1e-5)


def test_csv_aptos_style_template_and_seeded_split(tmp_path: Path) -> None:
    rows = []
    for i in range(50):
        _png(tmp_path / "train_images" / f"id{i:03d}.png", i, mode="L")
        rows.append([f"id{i:03d}", i % 5])
    _write_csv(tmp_path / "train.csv", ["id_code", "diagnosis"], rows)
    spec = f"csv:{tmp_path / 'train.csv'}?template=train_images/{{}}.png"
    data = load_dataset(spec, img_size=SIZE)
    assert (data.num_classes, data.task, data.class_names) == (5, "multiclass", None)
    assert (len(data.train), len(data.val), len(data.test)) == (35, 5, 10)
    for split in (data.train, data.val, data.test):
        assert sorted(set(split.labels.tolist())) == [0, 1, 2, 3, 4]
    again = load_dataset(spec, img_size=SIZE)
    assert torch.equal(data.test.images, again.test.images)
    assert data.train.images.shape == (35, 1, SIZE, SIZE)  # grayscale kept as one channel


def test_csv_auto_extension_and_one_hot_labels(tmp_path: Path) -> None:
    rows = []
    for i in range(9):
        _png(tmp_path / f"ISIC_{i}.jpg", i)
        one_hot = [0.0, 0.0, 0.0, 0.0]
        one_hot[(0, 1, 3)[i % 3]] = 1.0  # column 2 ("UNK") is never used
        rows.append([f"ISIC_{i}", *one_hot, ("train", "val", "test")[i // 3]])
    _write_csv(tmp_path / "gt.csv", ["image", "MEL", "NV", "UNK", "BCC", "split"], rows)
    data = load_dataset(f"csv:{tmp_path / 'gt.csv'}", img_size=SIZE)
    assert data.class_names == ["MEL", "NV", "BCC"]
    assert data.train.labels.tolist() == [0, 1, 2]


def test_csv_errors(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 1)
    _write_csv(tmp_path / "nocol.csv", ["picture", "label"], [["a.png", 0], ["b.png", 1]])
    _refused(f"csv:{tmp_path / 'nocol.csv'}", "no image column")
    _refused(f"csv:{tmp_path / 'nocol.csv'}?image=file", "no column 'file'")
    _write_csv(tmp_path / "missing.csv", ["image", "label"], [["a.png", 0], ["gone.png", 1]])
    _refused(f"csv:{tmp_path / 'missing.csv'}", "1 listed images not found, e.g.")
    _write_csv(
        tmp_path / "split.csv",
        ["image", "label", "split"],
        [["a.png", 0, "train"], ["b.png", 1, "holdout"]],
    )
    _refused(f"csv:{tmp_path / 'split.csv'}", "split 'holdout' is not one of")
    _write_csv(
        tmp_path / "notest.csv",
        ["image", "label", "split"],
        [["a.png", 0, "train"], ["b.png", 1, "train"]],
    )
    _refused(f"csv:{tmp_path / 'notest.csv'}", "no rows with split = test")
    _write_csv(tmp_path / "blank.csv", ["image", "label"], [["a.png", 0], ["b.png", ""]])
    _refused(f"csv:{tmp_path / 'blank.csv'}", "line 3: empty 'label'")
    _refused(f"csv:{tmp_path / 'blank.csv'}?colour=red", "unknown csv option")
    _refused(f"csv:{tmp_path / 'absent.csv'}", "does not exist")


def test_shots_on_image_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", per_class=4)
    data = load_dataset(f"imagefolder:{root}", img_size=SIZE, shots=2, seed=1)
    assert len(data.train) == 6 and sorted(data.train.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(data.val) == len(data.test) == 12
    with pytest.raises(UserError, match=r"class 0 \(ant\) has only 4"):
        load_dataset(f"imagefolder:{root}", img_size=SIZE, shots=5)
