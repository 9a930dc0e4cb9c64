"""Corrupted test sets: each corruption against its definition, and the metrics on a real model.

Images are the real BreastMNIST test images at 28 px; the model is EfficientNet-Lite0 with the
shipped pretrained weights and a fresh two-class head.
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from riftune.data import ImageTensorDataset, load_dataset, make_loader
from riftune.metrics import accuracy, auc, collect
from riftune.metrics.robustness import (
    BLUR_SIGMA,
    CONTRAST,
    CORRUPTIONS,
    NOISE_SIGMA,
    PIXELATE,
    corrupt,
    robustness_metrics,
)
from riftune.models import build_classifier
from riftune.models.classifier import Classifier

SIZE = 28
NAMES = list(CORRUPTIONS)


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_dataset("breastmnist", data_root=medmnist_dir, img_size=SIZE, download=False)


@pytest.fixture(scope="module")
def images(breast) -> torch.Tensor:
    """The first 16 test images, grayscale uint8. Shape: (16, 1, 28, 28)."""
    return breast.test.images[:16]


def _change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean())


def test_the_set_has_the_six_corruptions():
    assert NAMES == [
        "gaussian_noise",
        "gaussian_blur",
        "contrast",
        "brightness",
        "jpeg",
        "pixelate",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(images, name):
    assert corrupt(images, name, 0, seed=0) is images


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_corruption_is_seeded_keeps_the_pixel_range_and_grows_with_severity(
    images, name, channels
):
    clean = images.expand(-1, channels, -1, -1).contiguous()
    changes = []
    for severity in (1, 2, 3):
        out = corrupt(clean, name, severity, seed=7)
        assert out.dtype == torch.uint8 and out.shape == clean.shape
        torch.testing.assert_close(out, corrupt(clean, name, severity, seed=7), rtol=0, atol=0)
        changes.append(_change(out, clean))
    assert 0 < changes[0] < changes[1] < changes[2], changes
    differs = not torch.equal(corrupt(clean, name, 2, seed=7), corrupt(clean, name, 2, seed=8))
    assert differs == (name == "gaussian_noise")  # only the noise is random


@pytest.mark.parametrize("name", NAMES)
def test_float_images_stay_on_the_unit_scale(images, name):
    x = images.float() / 255
    out = corrupt(x, name, 3, seed=0)
    assert out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1
    assert _change(out, x) > 0


def test_noise_has_the_stated_standard_deviation():
    grey = torch.full((8, 3, 32, 32), 0.5)
    for severity, sigma in enumerate(NOISE_SIGMA, start=1):
        diff = corrupt(grey, "gaussian_noise", severity, seed=0) - grey
        assert abs(float(diff.mean())) < 0.02 * sigma + 0.003
        # severity 3 clips at 0.5 / 0.38 ≈ 1.3σ, which shrinks the spread
        expected = sigma if severity < 3 else _clipped_std(sigma, 0.5)
        assert float(diff.std()) == pytest.approx(expected, rel=0.03)


def _clipped_std(sigma: float, bound: float) -> float:
    """Standard deviation of clip(σ·ε, −bound, bound), ε ~ N(0, 1), by numerical integration."""
    e = np.linspace(-8, 8, 200001)
    density = np.exp(-(e**2) / 2) / math.sqrt(2 * math.pi)
    values = np.clip(sigma * e, -bound, bound)
    step = e[1] - e[0]
    return float(math.sqrt(np.sum(values**2 * density) * step))


def test_contrast_is_the_blend_with_the_mean_grey_level(images):
    x = images.expand(-1, 3, -1, -1).float() / 255
    x = x * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)  # colour, so grey ≠ any channel
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for severity, c in enumerate(CONTRAST, start=1):
        mean = gray.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        expected = (c * x + (1 - c) * mean).clamp(0, 1)
        torch.testing.assert_close(corrupt(x, "contrast", severity, 0), expected, atol=1e-5, rtol=0)


def test_blur_is_a_gaussian_convolution_with_reflected_borders(images):
    x = images.float() / 255
    for severity, sigma in enumerate(BLUR_SIGMA, start=1):
        radius = math.ceil(3 * sigma)
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k1 = torch.exp(-(t**2) / (2 * sigma**2))
        kernel = torch.outer(k1, k1) / k1.sum() ** 2
        padded = F.pad(x.double(), [radius] * 4, mode="reflect")
        expected = F.conv2d(padded, kernel.view(1, 1, *kernel.shape)).float()
        got = corrupt(x, "gaussian_blur", severity, 0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_pixelate_leaves_round_c_s_distinct_rows_and_columns(images):
    for severity, c in enumerate(PIXELATE, start=1):
        out = corrupt(images, "pixelate", severity, 0)[:, 0]
        blocks = round(c * SIZE)
        for image in out:
            assert len(torch.unique(image, dim=0)) <= blocks
            assert torch.unique(image, dim=1).shape[1] <= blocks


def test_bad_names_and_severities_are_refused(images):
    with pytest.raises(ValueError, match="unknown corruption 'fog'; choose one of: gaussian_noise"):
        corrupt(images, "fog", 1, 0)
    with pytest.raises(ValueError, match="severity must be 0, 1, 2 or 3; got 4"):
        corrupt(images, "jpeg", 4, 0)


# ------------------------------------------------------------------------ on a real model
@pytest.fixture(scope="module")
def model_and_split(breast):
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", num_classes=2, img_size=SIZE).eval()
    cfg = model.pretrained_cfg
    test = breast.test
    split = ImageTensorDataset(test.images[:24], test.labels[:24], cfg["mean"], cfg["std"])
    assert len(torch.unique(split.labels)) == 2  # both classes, so the AUC is defined
    return model, split


def _evaluate(model, dataset: ImageTensorDataset) -> dict[str, float]:
    """The clean evaluation path: a torch DataLoader over items, then accuracy and AUC."""
    out = collect(model, make_loader(dataset, batch_size=7), "cpu")
    return {"acc": accuracy(out.logits, out.labels), "auc": auc(out.logits, out.labels)}


def test_metrics_match_evaluating_each_corrupted_split_and_severity_zero_is_clean(
    model_and_split,
):
    model, split = model_and_split
    result = robustness_metrics(
        model, split, batch_size=10, device="cpu", seed=3, severities=(0, 1, 3)
    )
    clean = _evaluate(model, split)
    assert list(result["corruptions"]) == NAMES
    graded = []
    for name in NAMES:
        by_severity = result["corruptions"][name]
        assert list(by_severity) == ["0", "1", "3"]
        assert by_severity["0"] == clean  # exactly the clean result
        for severity in ("1", "3"):
            pixels = corrupt(split.images, name, int(severity), seed=3)
            alone = ImageTensorDataset(pixels, split.labels, model.pretrained_cfg["mean"],
                                       model.pretrained_cfg["std"])  # fmt: skip
            expected = _evaluate(model, alone)
            assert by_severity[severity]["acc"] == expected["acc"]
            assert by_severity[severity]["auc"] == pytest.approx(expected["auc"], abs=1e-12)
            graded.append(by_severity[severity])
    assert result["mean_acc"] == pytest.approx(np.mean([g["acc"] for g in graded]), abs=1e-12)
    assert result["mean_auc"] == pytest.approx(np.mean([g["auc"] for g in graded]), abs=1e-12)
    # the corruptions reach the model: its scores move on most of them at severity 3
    moved = [result["corruptions"][n]["3"]["auc"] != clean["auc"] for n in NAMES]
    assert sum(moved) >= 4, result


def test_severities_are_checked(model_and_split):
    model, split = model_and_split
    with pytest.raises(ValueError, match=r"severities must be a non-empty subset of 0\.\.3"):
        robustness_metrics(model, split, batch_size=8, device="cpu", severities=(1, 5))


# ------------------------------------------------------------------ two real processes
def _tiny() -> tuple[Classifier, ImageTensorDataset]:
    """A linear classifier on 8 px images and a 13-image split (shards of 7 and 6)."""
    torch.manual_seed(5)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    model = Classifier(backbone, num_features=4, num_classes=2, pretrained_cfg={}).eval()
    gen = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (13, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(13) % 2
    return model, ImageTensorDataset(images, labels, (0.5,) * 3, (0.25,) * 3)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, split = _tiny()
    result = robustness_metrics(model, split, batch_size=3, device="cpu", seed=1)
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters import torch
def test_two_processes_give_every_rank_the_one_process_result(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    model, split = _tiny()
    alone = robustness_metrics(model, split, batch_size=3, device="cpu", seed=1)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == alone
