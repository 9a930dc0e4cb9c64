"""Training augmentation: batched crop-and-flip resampling, its parameter draws, and their seeding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from riftune.data import load_dataset
from riftune.data.transforms import CropDraws, draw_crops
from riftune.data.transforms import resized_crop_and_flip as resample

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _per_image(images: torch.Tensor, crops: CropDraws) -> torch.Tensor:
    """Independent construction: one F.interpolate per image on its cropped slice, then flip."""
    size = images.shape[-1]
    out = []
    for image, top, left, h, w, flip in zip(images, *(c.tolist() for c in crops), strict=True):
        crop = image[None, :, top : top + h, left : left + w].float()
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append(resized.flip(-1) if flip else resized)
    return torch.stack(out)


def _crops(rows: list[tuple[int, int, int, int, bool]]) -> CropDraws:
    columns = list(zip(*rows, strict=True))
    return CropDraws(*(torch.tensor(c, dtype=torch.int64) for c in columns[:4]),
                     torch.tensor(columns[4]))  # fmt: skip


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_batched_resampling_equals_per_image_interpolate(size: int, channels: int) -> None:
    rng = np.random.default_rng(size * 10 + channels)
    s = size
    edges = [
        (0, 0, s, s, False),
        (0, 0, s, s, True),  # the full image: itself or its mirror
        (0, 0, 1, 1, False),
        (s - 1, s - 1, 1, 1, True),  # one pixel
        (3, 0, 1, s, False),
        (0, 5, s, 1, True),  # one row, one column
        (0, 0, s - 1, s, True),
        (1, 0, s - 1, s, False),  # one row short of the image
        (s - 9, s - 20, 9, 20, True),
        (2, 7, s - 2, s - 7, False),
    ]  # non-square, to the edge
    random = []
    for _ in range(60):
        h, w = int(rng.integers(1, s + 1)), int(rng.integers(1, s + 1))
        top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        random.append((top, left, h, w, bool(rng.random() < 0.5)))
    crops = _crops(edges + random)
    images = torch.from_numpy(rng.integers(0, 256, (len(crops.top), channels, s, s), np.uint8))
    ours = resample(images, crops)
    assert ours.shape == images.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _per_image(images, crops), rtol=0, atol=1e-3)
    assert torch.equal(ours[0], images[0].float())  # the full image: exactly itself
    assert torch.equal(ours[1], images[1].float().flip(-1))  # or exactly its mirror


def _todays_draws(n: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent construction: the per-image NumPy draws the augmentation used before."""
    area = rng.uniform(0.8, 1.0, n) * size * size
    aspect = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), n))
    width = np.clip(np.round(np.sqrt(area * aspect)), 1, size).astype(int)
    height = np.clip(np.round(np.sqrt(area / aspect)), 1, size).astype(int)
    top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
    return {"top": top, "left": left, "height": height, "width": width}


@pytest.mark.parametrize("size", [28, 64])
def test_draws_have_todays_distributions(size: int) -> None:
    n = 20_000
    draws = draw_crops(n, size, torch.Generator().manual_seed(size))
    ours = {name: getattr(draws, name).numpy() for name in ("top", "left", "height", "width")}
    today = _todays_draws(n, size, np.random.default_rng(size))
    assert all(v.shape == (n,) for v in ours.values())
    assert ours["height"].min() >= 1 and ours["width"].min() >= 1
    assert (ours["top"] >= 0).all() and (ours["top"] + ours["height"] <= size).all()
    assert (ours["left"] >= 0).all() and (ours["left"] + ours["width"] <= size).all()
    # the sides, the area share and the aspect ratio as today (two-sample KS)
    for name, stat in {"height": lambda d: d["height"], "width": lambda d: d["width"],
                       "area": lambda d: d["height"] * d["width"],
                       "aspect": lambda d: d["width"] / d["height"]}.items():  # fmt: skip
        assert stats.ks_2samp(stat(ours), stat(today)).pvalue > 1e-3, name
    # offsets uniform on 0..S - side: (offset + U) / (S - side + 1) is then exactly U(0, 1)
    jitter = np.random.default_rng(0)
    for offset, side in (("top", "height"), ("left", "width")):
        spread = (ours[offset] + jitter.random(n)) / (size - ours[side] + 1)
        assert stats.kstest(spread, "uniform").pvalue > 1e-3, offset
    flips = int(draws.flip.sum())
    assert draws.flip.dtype == torch.bool and stats.binomtest(flips, n, 0.5).pvalue > 1e-3


def test_augmentation_depends_only_on_seed_epoch_and_index(medmnist_dir: Path) -> None:
    def load(seed: int):
        return load_dataset("breastmnist", data_root=medmnist_dir, img_size=28, augment=True,
                            seed=seed, mean=MEAN, std=STD).train  # fmt: skip

    train = load(3)
    train.set_epoch(1)
    items = list(range(10, 42))
    whole = train.batch(items)[0]
    # the same items in other batches: reversed, in pieces, mixed with others, one at a time
    assert torch.equal(train.batch(items[::-1])[0], whole.flip(0))
    pieces = torch.cat([train.batch(items[i : i + 5])[0] for i in range(0, len(items), 5)])
    assert torch.equal(pieces, whole)
    mixed, _, index = train.batch([200, *items[:7], 0, 5])
    assert torch.equal(mixed[1:8], whole[:7]) and index.tolist()[:2] == [200, 10]
    torch.testing.assert_close(torch.stack([train[i][0] for i in items]), whole, rtol=0, atol=1e-6)
    # a fresh copy set straight to epoch 1 (a resumed run) and a moved copy draw the same
    resumed = load(3)
    resumed.set_epoch(1)
    assert torch.equal(resumed.batch(items)[0], whole)
    assert torch.equal(train.to("cpu").batch(items)[0], whole)
    # the table is the documented draw: item 12's crop interpolated by hand, then normalized
    state = np.random.SeedSequence((3, 1)).generate_state(1, np.uint64)
    crops = draw_crops(len(train), 28, torch.Generator().manual_seed(int(state[0])))
    pixels = _per_image(train.images[[12]], crops.take(torch.tensor([12])))[0] / 255
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(whole[2], (pixels - mean) / std, rtol=0, atol=1e-4)
    # other epochs and seeds draw other crops; without augmentation nothing is drawn
    train.set_epoch(2)
    assert not torch.equal(train.batch(items)[0], whole)
    assert not torch.equal(resumed.batch(items)[0], load(4).batch(items)[0])
    assert not torch.equal(train.without_augmentation().batch(items)[0], whole)


def test_without_augmentation_a_batch_is_a_gather_and_normalize(medmnist_dir: Path) -> None:
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28, mean=MEAN, std=STD)
    raw = np.load(medmnist_dir / "breastmnist.npz")["train_images"]  # (N, 28, 28) uint8
    items = [7, 0, 300, 7, 545]
    images, labels, index = data.train.batch(items)
    expected = (raw[items][:, None] / 255 - np.array(MEAN)[:, None, None]) / np.array(STD)[
        :, None, None
    ]
    np.testing.assert_allclose(images.numpy(), expected, rtol=0, atol=1e-5)
    assert index.tolist() == items and torch.equal(labels, data.train.labels[items])
    for row, i in enumerate(items):
        image, label, position = data.train[i]
        assert torch.equal(image, images[row]) and label == labels[row] and position == i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_augmented_batch_equals_the_cpu_one(medmnist_dir: Path) -> None:
    data = load_dataset("breastmnist", data_root=medmnist_dir, img_size=28, augment=True, seed=5)
    data.train.set_epoch(3)
    items = [545, 0, 17, 17, 300]
    on_gpu = data.train.to("cuda").batch(items)
    assert all(t.device.type == "cuda" for t in on_gpu)
    for gpu, cpu in zip(on_gpu, data.train.batch(items), strict=True):
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
