"""MedMNIST-format .npz files: validation of bad input, refusal of pickles, images and transforms."""

from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from riftune.data import load_dataset
from riftune.data.transforms import Normalize, resize, to_nchw
from riftune.errors import UserError


def _arrays(n: int = 6, shape: tuple[int, ...] = (10, 10), num_classes: int = 3) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).reshape(-1, 1).astype(np.uint8)
    return arrays


def _write(path: Path, arrays: dict) -> str:
    np.savez(path, **arrays)
    return str(path)


def _refused(spec: str, match: str) -> str:
    with pytest.raises(UserError, match=match) as err:
        load_dataset(spec, img_size=8)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_valid_rgb_npz_loads(tmp_path: Path) -> None:
    arrays = _arrays(shape=(10, 12, 3))
    data = load_dataset(_write(tmp_path / "mine.npz", arrays), img_size=10)
    assert (data.num_classes, data.task, data.name, data.class_names) == (
        3,
        "multiclass",
        "mine",
        None,
    )
    image, label, index = data.val[4]
    expected = np.asarray(
        Image.fromarray(arrays["val_images"][4]).resize((10, 10), Image.Resampling.BILINEAR)
    )
    expected = (expected.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(image.numpy(), expected, atol=2 / 255 + 1e-6)
    assert (int(label), int(index)) == (1, 4)


def test_path_that_does_not_exist(tmp_path: Path) -> None:
    _refused(str(tmp_path / "nowhere.npz"), "does not exist")


def test_file_that_is_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("not a zip archive\n")
    _refused(str(tmp_path / "text.npz"), "not a valid .npz")


def test_truncated_npz(tmp_path: Path, medmnist_dir: Path) -> None:
    data = (medmnist_dir / "breastmnist.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _refused(str(tmp_path / "cut.npz"), "not a valid .npz|corrupted")


def test_npy_file_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "one.npz", "wb") as handle:
        np.save(handle, np.zeros(3))
    _refused(str(tmp_path / "one.npz"), "single array")


class _RunsCode:
    """Unpickling this object touches a sentinel file: proof that code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


def test_object_arrays_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "code_ran"
    arrays = _arrays()
    arrays["train_labels"] = np.array([_RunsCode(sentinel)] * 6, dtype=object)
    path = _write(tmp_path / "evil.npz", arrays)
    message = _refused(path, "object array")
    assert "train_labels" in message
    assert not sentinel.exists()
    # Control: the same file does run code when unpickling is allowed.
    with np.load(path, allow_pickle=True) as archive:
        archive["train_labels"]
    assert sentinel.exists()


def test_missing_keys_are_named(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["val_labels"], arrays["test_images"]
    message = _refused(_write(tmp_path / "a.npz", arrays), "lacks the keys")
    assert "val_labels" in message and "test_images" in message


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    _refused(_write(tmp_path / "a.npz", arrays), "test has 6 images but 5 labels")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, 1, 2, 0, 1, -1], dtype=np.int8), "negative"),
        (np.array([0, 1, 2, 0, 1, 0.5]), "non-integer"),
        (np.array([0, 1, 2, 0, 1, np.nan]), "non-integer"),
        (np.array(["a"] * 6), "dtype"),
        (np.full((6, 3), 2, dtype=np.uint8), "multi-label targets are 0 or 1"),
        (np.zeros((6, 1, 1), dtype=np.uint8), "shape"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: np.ndarray, match: str) -> None:
    arrays = _arrays()
    arrays["val_labels"] = labels
    _refused(_write(tmp_path / "a.npz", arrays), match)


def test_labels_out_of_range_for_a_known_flag(tmp_path: Path) -> None:
    arrays = _arrays(num_classes=3)  # breastmnist has 2 classes
    _refused(_write(tmp_path / "breastmnist.npz", arrays), "up to 2 but there are only 2 classes")


def test_label_gap_in_generic_npz(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train_labels"] = np.array([0, 2, 0, 2, 0, 2])
    _refused(_write(tmp_path / "a.npz", arrays), r"classes \[1\] occur in no training image")


def test_single_class_is_refused(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "a.npz", _arrays(num_classes=1)), "at least two classes")


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((6, 10, 10), dtype=np.float32), "dtype float32; expected uint8"),
        (np.zeros((6, 10, 10), dtype=np.uint16), "dtype uint16"),
        (np.zeros((6, 10, 10, 2), dtype=np.uint8), "shape"),
        (np.zeros((6, 100), dtype=np.uint8), "shape"),
        (np.zeros((6, 4, 10, 10, 3), dtype=np.uint8), "shape"),
    ],
)
def test_bad_images(tmp_path: Path, images: np.ndarray, match: str) -> None:
    arrays = _arrays()
    arrays["train_images"] = images
    _refused(_write(tmp_path / "a.npz", arrays), match)


def test_empty_split(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["val_images"] = np.zeros((0, 10, 10), dtype=np.uint8)
    arrays["val_labels"] = np.zeros((0, 1), dtype=np.uint8)
    _refused(_write(tmp_path / "a.npz", arrays), "val split is empty")


def test_unknown_spec_lists_the_forms() -> None:
    _refused("definitely_not_data", "unknown dataset")


def test_resize_matches_pil_when_shrinking_and_growing() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 37, 29), dtype=np.uint8)
    for size in (16, 64):
        ours = resize(to_nchw(images), size, chunk=3)
        assert ours.shape == (4, 1, size, size) and ours.dtype == torch.uint8
        for i in range(4):
            ref = np.asarray(
                Image.fromarray(images[i]).resize((size, size), Image.Resampling.BILINEAR)
            )
            assert np.abs(ours[i, 0].numpy().astype(int) - ref).max() <= 1


def test_normalize_gray_and_rgb_against_numpy() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalize = Normalize(mean, std)
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    gray = rng.integers(0, 256, (1, 5, 5), dtype=np.uint8)
    m, s = np.array(mean)[:, None, None], np.array(std)[:, None, None]
    np.testing.assert_allclose(
        normalize(torch.from_numpy(rgb)).numpy(), (rgb / 255 - m) / s, atol=1e-5
    )
    np.testing.assert_allclose(
        normalize(torch.from_numpy(gray)).numpy(), (gray / 255 - m) / s, atol=1e-5
    )
    with pytest.raises(ValueError, match="positive"):
        Normalize(mean, (0.2, 0.0, 0.2))


def test_augmentation_is_a_function_of_seed_epoch_and_index(medmnist_dir: Path) -> None:
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=32, augment=True, seed=3)
    first = data.train[10][0]
    assert torch.equal(first, data.train[10][0])
    data.train.set_epoch(1)
    assert not torch.equal(first, data.train[10][0])
    data.train.set_epoch(0)
    assert torch.equal(first, data.train[10][0])
    plain = load_dataset("breastmnist", data_root=medmnist_dir, img_size=32)
    assert torch.equal(data.val[10][0], plain.val[10][0])  # only train is augmented
    assert not torch.equal(first, plain.train[10][0])
    assert first.shape == (3, 32, 32) and bool(first.abs().max() <= 1.0 + 1e-6)
    unaugmented = data.train.without_augmentation()
    assert torch.equal(unaugmented[10][0], plain.train[10][0]) and data.train.augment
