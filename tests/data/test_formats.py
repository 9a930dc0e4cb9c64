"""The registry of data formats: how a --data value is matched, every format's splits and
images to classify through the one entry point, and a new format added in one class."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from riftune.config import RunConfig
from riftune.data import load_dataset, load_new_images
from riftune.data.formats import (
    DataFormat,
    ImageRequest,
    NewImages,
    SplitRequest,
    base,
    formats,
    forms_help,
    register,
    resolve,
)
from riftune.data.medmnist import FLAGS
from riftune.data.splits import SPLITS
from riftune.data.stored import ImageArray, LabelledSplits
from riftune.errors import UserError
from riftune.registry import Registry

REPO = Path(__file__).resolve().parents[2]
BREAST = FLAGS["breastmnist"].labels


@pytest.fixture
def breast(medmnist_dir):
    """BreastMNIST's arrays, read with NumPy alone: split → (images (N, 28, 28), labels (N,))."""
    with np.load(medmnist_dir / "breastmnist.npz") as archive:
        return {s: (archive[f"{s}_images"], archive[f"{s}_labels"][:, 0]) for s in SPLITS}


def _files(root: Path, breast, per_class: int = 2) -> list[tuple[str, int]]:
    """The first images of each class of every split as PNGs in root/{split}/{class}/."""
    written = []
    for split in SPLITS:
        images, labels = breast[split]
        for label in (0, 1):
            for k in np.flatnonzero(labels == label)[:per_class]:
                path = root / split / BREAST[label] / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[k]).save(path)
                written.append((path.relative_to(root).as_posix(), label))
    return written


def _table(file: Path, written: list[tuple[str, int]]) -> Path:
    with file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "split"])
        writer.writerows([(path, label, path.split("/")[0]) for path, label in written])
    return file


def test_every_form_finds_its_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "breastmnist").mkdir()  # a folder named like a flag: the flag still wins
    (tmp_path / "photos").mkdir()
    (tmp_path / "arrays").write_bytes(b"")
    cases = {
        "breastmnist": ("medmnist", "breastmnist", {}),
        "retinamnist_128": ("medmnist", "retinamnist_128", {}),
        "photos": ("imagefolder", "photos", {}),
        "imagefolder:photos?val=0.2": ("imagefolder", "photos", {"val": "0.2"}),
        "imagefolder:gone": ("imagefolder", "gone", {}),
        "t.CSV?label=dx": ("csv", "t.CSV", {"label": "dx"}),
        "csv:t.txt": ("csv", "t.txt", {}),
        "x.npz": ("npz", "x.npz", {}),
        "sub/dir/x": ("npz", "sub/dir/x", {}),
        "arrays": ("npz", "arrays", {}),
    }
    for spec, (name, location, options) in cases.items():
        data = resolve(spec)
        assert (data.format.name, data.location, data.options) == (name, location, options), spec
    assert [f.name for f in formats()] == ["medmnist", "imagefolder", "csv", "npz"]


def test_an_unknown_value_lists_every_registered_form():
    with pytest.raises(UserError) as caught:
        resolve("not_a_dataset")
    message = str(caught.value)
    assert message.startswith("unknown dataset 'not_a_dataset'; give ")
    for fmt in formats():
        assert fmt.form in message
    assert "\n" not in message


def test_the_flag_the_npz_path_and_the_default_agree(medmnist_dir, breast):
    by_flag = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28)
    by_path = load_dataset(str(medmnist_dir / "breastmnist.npz"), img_size=28)
    for split in SPLITS:
        images, labels = breast[split]
        for data in (by_flag, by_path):
            assert torch.equal(getattr(data, split).images[:, 0], torch.from_numpy(images))
            assert torch.equal(getattr(data, split).labels, torch.from_numpy(labels).long())
    assert by_flag.class_names == by_path.class_names == list(BREAST)


def test_a_folder_path_and_a_csv_path_load_as_their_prefixed_forms(tmp_path, breast):
    written = _files(tmp_path / "derm", breast)
    table = _table(tmp_path / "derm" / "table.csv", written)
    pairs = [
        (f"imagefolder:{tmp_path / 'derm'}", str(tmp_path / "derm")),
        (f"csv:{table}", str(table)),
    ]
    for prefixed, bare in pairs:
        first, second = load_dataset(prefixed, img_size=28), load_dataset(bare, img_size=28)
        for split in SPLITS:
            assert torch.equal(getattr(first, split).images, getattr(second, split).images)
            assert torch.equal(getattr(first, split).labels, getattr(second, split).labels)
            assert len(getattr(first, split)) == 4
    # the image folder names its classes after the folders, sorted; the table's are indices
    assert load_dataset(str(tmp_path / "derm"), img_size=28).class_names == sorted(BREAST)


def test_options_and_table_columns_only_where_a_format_takes_them(medmnist_dir, tmp_path):
    with pytest.raises(UserError, match=r"medmnist data takes no options after '\?'"):
        load_dataset("breastmnist?val=0.2", data_root=medmnist_dir)
    with pytest.raises(UserError, match="unknown imagefolder option"):
        load_dataset(f"imagefolder:{tmp_path}?colour=red")
    with pytest.raises(UserError, match="apply to csv: data only"):
        load_dataset("breastmnist", data_root=medmnist_dir, group_column="patient")
    with pytest.raises(UserError, match="takes no options after '\\?' here"):
        load_new_images(f"imagefolder:{tmp_path}?val=0.2", 28, None, 2)


def test_the_configuration_asks_the_registry_which_data_takes_table_columns(tmp_path):
    bare_csv = {"data": str(tmp_path / "t.csv"), "group_column": "patient", "label_columns": "a,b"}
    assert RunConfig.from_dict({"data": bare_csv}).data.group_column == "patient"
    for data in ("breastmnist", str(tmp_path), "x.npz"):
        for option in ("group_column", "label_columns"):
            with pytest.raises(UserError, match="applies to csv:FILE data only"):
                RunConfig.from_dict({"data": {"data": data, option: "a"}})


def test_images_to_classify_from_every_format(medmnist_dir, tmp_path, breast):
    request = (28, list(BREAST), 2)
    by_flag = load_new_images("breastmnist", *request, data_root=medmnist_dir)
    by_path = load_new_images(str(medmnist_dir / "breastmnist.npz"), *request)
    counts = [len(breast[s][0]) for s in SPLITS]
    for got in (by_flag, by_path):
        assert got.keys["split"] == [
            s for s, n in zip(SPLITS, counts, strict=True) for _ in range(n)
        ]
        assert got.keys["index"] == [i for n in counts for i in range(n)]
        expected = np.concatenate([breast[s][0] for s in SPLITS])
        np.testing.assert_array_equal(got.pixels[:, 0].numpy(), expected)
        np.testing.assert_array_equal(got.labels, np.concatenate([breast[s][1] for s in SPLITS]))

    written = _files(tmp_path / "new", breast, per_class=1)
    for spec in (str(tmp_path / "new" / "test"), f"imagefolder:{tmp_path / 'new' / 'test'}"):
        got = load_new_images(spec, *request)
        test_rows = [
            (p.removeprefix("test/"), label) for p, label in written if p.startswith("test/")
        ]
        assert sorted(zip(got.keys["file"], got.labels.tolist(), strict=True)) == sorted(test_rows)
    table = _table(tmp_path / "new" / "table.csv", written)
    for spec in (str(table), f"csv:{table}?image=image&label=label"):
        got = load_new_images(spec, *request)
        assert got.keys["file"] == [p for p, _ in written]
        assert got.labels.tolist() == [label for _, label in written]
        first = np.asarray(Image.open(tmp_path / "new" / written[0][0]))
        np.testing.assert_array_equal(got.pixels[0, 0].numpy(), first)


class _Stripes(DataFormat):
    """A toy format for the test below: ``stripes:N``, N images per split, class = i mod 2."""

    name = "stripes"
    prefix = "stripes:"
    precedence = 9
    form = "stripes:N"
    help = "stripes:N (N striped images per split)"

    def _arrays(self, location: str) -> tuple[np.ndarray, np.ndarray]:
        count = int(location)
        images = np.zeros((count, 8, 8), dtype=np.uint8)
        images[:, ::2] = (np.arange(count) * 10 % 256)[:, None, None]
        return images, np.arange(count) % 2

    def splits(self, location: str, options: dict[str, str], request: SplitRequest):
        images, labels = self._arrays(location)
        return LabelledSplits(
            {s: ImageArray(images) for s in SPLITS}, {s: labels for s in SPLITS}, 2,
            ["even", "odd"], "stripes", location,
        )  # fmt: skip

    def new_images(self, location: str, options: dict[str, str], request: ImageRequest):
        images, labels = self._arrays(location)
        return NewImages(
            ImageArray(images).pixels(request.img_size), {"file": list(range(len(images)))}, labels
        )


def test_a_new_format_is_one_registered_class(monkeypatch):
    registry = Registry("data format")
    for fmt in formats():
        registry.add(fmt.name, fmt)
    monkeypatch.setattr(base, "FORMATS", registry)
    register(_Stripes)
    assert "stripes:N (N striped images per split)" in forms_help()
    data = load_dataset("stripes:6", img_size=8, shots=2, seed=1)
    assert (data.name, data.class_names, data.num_classes, len(data.train)) == (
        "stripes",
        ["even", "odd"],
        2,
        4,
    )
    assert sorted(data.train.labels.tolist()) == [0, 0, 1, 1]
    assert load_new_images("stripes:3", 4, None, 2).pixels.shape == (3, 1, 4, 4)
    with pytest.raises(UserError, match=re.escape("stripes:N")):
        resolve("nothing_here")


def test_the_data_help_of_finetune_and_predict_lists_every_format():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in ("finetune", "predict"):
        out = subprocess.run(
            [sys.executable, "-m", "riftune", command, "--help"],
            capture_output=True, text=True, check=True, env=env, cwd=REPO,
        ).stdout  # fmt: skip
        flat = " ".join(out.split())
        for fmt in formats():
            assert " ".join(fmt.help.split()) in flat, (command, fmt.name)
