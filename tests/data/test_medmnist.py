"""MedMNIST flags on the real files: contents, lookup order, and MD5-checked download (mocked)."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from riftune.data import load_dataset, medmnist
from riftune.errors import UserError


def _pil_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Independent resize + normalization (mean = std = 0.5): PIL bilinear, then NumPy."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return (resized.astype(np.float64) / 255.0 - 0.5) / 0.5


def test_breastmnist_real_file_matches_independent_pipeline(medmnist_dir: Path) -> None:
    raw = np.load(medmnist_dir / "breastmnist.npz")
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=40)
    assert (len(data.train), len(data.val), len(data.test)) == (546, 78, 156)
    assert (data.num_classes, data.task, data.name) == (2, "binary", "breastmnist")
    assert data.class_names == ["malignant", "normal, benign"]
    for split in ("train", "val", "test"):
        dataset, labels = getattr(data, split), raw[f"{split}_labels"].ravel()
        np.testing.assert_array_equal(dataset.labels.numpy(), labels)
        for i in (0, 7, len(dataset) - 1):
            image, label, index = dataset[i]
            assert image.shape == (3, 40, 40) and image.dtype.is_floating_point
            assert label.dtype == index.dtype == torch.int64 and label.ndim == index.ndim == 0
            assert (int(label), int(index)) == (labels[i], i)
            expected = _pil_reference(raw[f"{split}_images"][i], 40)
            for channel in range(3):  # grayscale repeated; within one grey level of PIL
                np.testing.assert_allclose(image[channel].numpy(), expected, atol=2 / 255 + 1e-6)


def test_breastmnist_64_at_native_size_is_exact(medmnist_dir: Path) -> None:
    raw = np.load(medmnist_dir / "breastmnist_64.npz")
    data = load_dataset(
        "breastmnist_64",
        data_root=medmnist_dir,
        img_size=64,
        mean=(0.2, 0.4, 0.6),
        std=(0.1, 0.2, 0.3),
    )
    assert data.name == "breastmnist_64" and len(data.train) == 546
    image, _, _ = data.test[5]
    pixels = raw["test_images"][5].astype(np.float64) / 255.0
    for channel, (mean, std) in enumerate([(0.2, 0.1), (0.4, 0.2), (0.6, 0.3)]):
        np.testing.assert_allclose(image[channel].numpy(), (pixels - mean) / std, atol=1e-5)


def test_pneumoniamnist_path_spec_gets_flag_metadata(medmnist_dir: Path) -> None:
    data = load_dataset(str(medmnist_dir / "pneumoniamnist.npz"), img_size=16)
    assert (len(data.train), len(data.val), len(data.test)) == (4708, 524, 624)
    assert data.class_names == ["normal", "pneumonia"] and data.task == "binary"
    assert data.name == "pneumoniamnist"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("organmnist3d", "3D"),
        ("breastmnist_100", "no size 100"),
        ("notamnist", "unknown dataset"),
    ],
)
def test_refused_flags(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message) as err:
        load_dataset(spec, data_root=tmp_path, download=False)
    assert "\n" not in str(err.value)


def test_flag_table_covers_all_2d_flags_and_sizes() -> None:
    expected = {"pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist",
                "retinamnist", "breastmnist", "bloodmnist", "tissuemnist", "organamnist",
                "organcmnist", "organsmnist"}  # fmt: skip
    assert set(medmnist.FLAGS) == expected
    for flag, info in medmnist.FLAGS.items():
        assert set(info.md5) == set(medmnist.SIZES)
        assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in info.md5.values()), flag
    file = medmnist.parse_flag("retinamnist_128")
    assert file.url == "https://zenodo.org/records/10519652/files/retinamnist_128.npz?download=1"
    assert file.md5 == "e48e916a24454daf90583d4e6efb1a18"


def test_shared_files_have_the_official_md5(medmnist_dir: Path) -> None:
    for name in ("breastmnist", "breastmnist_64", "pneumoniamnist"):
        digest = hashlib.md5((medmnist_dir / f"{name}.npz").read_bytes()).hexdigest()
        assert digest == medmnist.parse_flag(name).md5


def _tiny_npz(path: Path, n_train: int, num_classes: int = 2) -> None:
    rng = np.random.default_rng(n_train)
    arrays = {}
    for split, n in (("train", n_train), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_retinamnist_ordinal_loads_as_multiclass(tmp_path: Path) -> None:
    _tiny_npz(tmp_path / "retinamnist.npz", 10, num_classes=5)
    data = load_dataset("retinamnist", data_root=tmp_path, img_size=8, download=False)
    assert (data.num_classes, data.task) == (5, "multiclass")
    assert data.class_names == ["0", "1", "2", "3", "4"]


def test_lookup_order_data_root_then_env_then_home(tmp_path: Path, monkeypatch) -> None:
    root, env, home = tmp_path / "root", tmp_path / "env", tmp_path / "home"
    _tiny_npz(root / "breastmnist.npz", 10)
    _tiny_npz(env / "breastmnist.npz", 12)
    _tiny_npz(home / ".medmnist" / "breastmnist.npz", 14)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RIFTUNE_DATA", str(env))
    assert len(load_dataset("breastmnist", data_root=root, img_size=8, download=False).train) == 10
    assert len(load_dataset("breastmnist", img_size=8, download=False).train) == 12
    assert (
        len(
            load_dataset(
                "breastmnist", data_root=tmp_path / "empty", img_size=8, download=False
            ).train
        )
        == 12
    )
    monkeypatch.delenv("RIFTUNE_DATA")
    assert len(load_dataset("breastmnist", img_size=8, download=False).train) == 14


class _Response(io.BytesIO):
    """What urlopen returns: a readable context manager."""


@pytest.fixture
def no_local_files(tmp_path: Path, monkeypatch) -> Path:
    """An empty data root, no $RIFTUNE_DATA, and a HOME without ~/.medmnist."""
    monkeypatch.delenv("RIFTUNE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "root"


def test_download_success_verifies_md5_and_renames(
    no_local_files: Path, medmnist_dir: Path, monkeypatch
) -> None:
    payload = (medmnist_dir / "breastmnist.npz").read_bytes()
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return _Response(payload)

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", urlopen)
    data = load_dataset("breastmnist", data_root=no_local_files, img_size=28)
    assert requested == ["https://zenodo.org/records/10519652/files/breastmnist.npz?download=1"]
    assert sorted(p.name for p in no_local_files.iterdir()) == ["breastmnist.npz"]
    assert (no_local_files / "breastmnist.npz").read_bytes() == payload
    assert len(data.train) == 546


def test_download_with_bad_md5_leaves_nothing(
    no_local_files: Path, medmnist_dir: Path, monkeypatch
) -> None:
    payload = bytearray((medmnist_dir / "breastmnist.npz").read_bytes())
    payload[1000] ^= 0xFF
    monkeypatch.setattr(
        medmnist.urllib.request, "urlopen", lambda url, timeout: _Response(bytes(payload))
    )
    with pytest.raises(UserError, match="MD5") as err:
        load_dataset("breastmnist", data_root=no_local_files)
    assert "\n" not in str(err.value)
    assert list(no_local_files.iterdir()) == []


def test_download_network_failure_says_where_to_put_the_file(
    no_local_files: Path, monkeypatch
) -> None:
    def urlopen(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", urlopen)
    with pytest.raises(UserError) as err:
        load_dataset("dermamnist_64", data_root=no_local_files)
    message = str(err.value)
    assert "dermamnist_64.npz" in message and str(no_local_files) in message
    assert "name resolution" in message and "\n" not in message
    assert not no_local_files.exists() or list(no_local_files.iterdir()) == []


def test_offline_without_download_names_file_and_folder(no_local_files: Path, monkeypatch) -> None:
    def urlopen(url, timeout):
        raise AssertionError("must not download")

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", urlopen)
    with pytest.raises(UserError, match=r"pneumoniamnist_128\.npz not found") as err:
        load_dataset("pneumoniamnist_128", data_root=no_local_files, download=False)
    assert str(no_local_files) in str(err.value) and "zenodo.org" in str(err.value)


def test_relative_npz_path_is_also_looked_up_in_data_root(tmp_path: Path, monkeypatch) -> None:
    _tiny_npz(tmp_path / "root" / "mine.npz", 10)
    monkeypatch.chdir(tmp_path)
    data = load_dataset("mine.npz", data_root=tmp_path / "root", img_size=8)
    assert (data.name, len(data.train)) == ("mine", 10)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mine.npz", img_size=8)
