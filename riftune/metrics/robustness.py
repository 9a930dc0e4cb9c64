"""Accuracy and AUC on corrupted test images, in the spirit of ImageNet-C and MedMNIST-C.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (https://arxiv.org/abs/1903.12261); Di Salvo et al., "MedMNIST-C:
Comprehensive benchmark and improved classifier robustness by simulating realistic image
corruptions", 2024 (https://arxiv.org/abs/2406.17536).

A fixed set of corruptions, each at three severities (0 is the identity), acts on the pixels as
:class:`~riftune.data.ImageTensorDataset` holds them (uint8, before normalization); the
corrupted pixels are rounded back to uint8 and normalized as the clean ones are. With x the
image on the 0..1 scale and S its side:

- ``gaussian_noise``: clip(x + σ·ε), ε ~ N(0, 1) per pixel, σ = 0.08, 0.18, 0.38 (ImageNet-C's
  severities 1, 3, 5).
- ``gaussian_blur``: a Gaussian kernel of standard deviation σ = c·max(1, S/64) pixels,
  c = 0.6, 1.0, 1.5 (at 224 px about ImageNet-C's 2-5 pixels; at 28 px still a visible blur).
- ``contrast``: c·x + (1 − c)·mean(gray(x)) per image, c = 0.4, 0.2, 0.05 (ImageNet-C's 1, 3, 5).
- ``brightness``: clip(f·x), f = 1.25, 1.5, 2.0.
- ``jpeg``: JPEG compression at quality 25, 15, 7 (ImageNet-C's 1, 3, 5).
- ``pixelate``: resized to round(c·S) (antialiased bilinear) and back with nearest neighbour,
  c = 0.6, 0.4, 0.25 (ImageNet-C's 1, 3, 5).

Built from ``torchvision.transforms.v2.functional`` (``gaussian_blur``, ``adjust_contrast``,
``adjust_brightness``, ``jpeg``, ``resize``). Only the noise is random; it is drawn from a
generator seeded with (seed, corruption, severity), so every corrupted set is a fixed
function of the images and the seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import BatchSampler

from riftune.data import BatchLoader, ImageTensorDataset, ShardedEvalSampler
from riftune.distributed import rank, world_size
from riftune.metrics.classification import accuracy, auc
from riftune.metrics.embeddings import collect

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
"""(images float32 on the 0..1 scale (N, C, S, S), severity 1..3, generator) -> same shape."""

NOISE_SIGMA = (0.08, 0.18, 0.38)
BLUR_SIGMA = (0.6, 1.0, 1.5)
CONTRAST = (0.4, 0.2, 0.05)
BRIGHTNESS = (1.25, 1.5, 2.0)
JPEG_QUALITY = (25, 15, 7)
PIXELATE = (0.6, 0.4, 0.25)
SEVERITIES = (1, 2, 3)
CHUNK = 256  # images corrupted at once: bounds the float32 working memory


def _gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x + NOISE_SIGMA[severity - 1] * noise


def _gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = BLUR_SIGMA[severity - 1] * max(1.0, x.shape[-1] / 64)
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])


def _contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    return TF.adjust_contrast(x, CONTRAST[severity - 1])


def _brightness(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    return TF.adjust_brightness(x, BRIGHTNESS[severity - 1])


def _jpeg(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its JPEG codec (torchcodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        return TF.jpeg(pixels, quality=JPEG_QUALITY[severity - 1]).float() / 255


def _pixelate(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    side = x.shape[-1]
    small = max(1, round(PIXELATE[severity - 1] * side))
    down = TF.resize(x, [small, small], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(down, [side, side], interpolation=TF.InterpolationMode.NEAREST)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "pixelate": _pixelate,
}
"""Every corruption by name, in the order reports list them."""


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """Corrupt a batch of images with corruption ``name`` at ``severity`` (module docs).

    Severity 0 returns ``images`` itself. Otherwise the result is a new tensor in the input's
    dtype and pixel range: uint8 images are corrupted on the 0..1 scale and rounded back to
    0..255; floating-point images are taken to be on the 0..1 scale and clipped to it. Runs
    on the CPU in chunks of 256 images; the result depends only on the images, ``name``,
    ``severity`` and ``seed``.

    Shape:
        images: (N, C, S, S), C ∈ {1, 3}, uint8 or floating point, on the CPU.
        output: the same shape and dtype.

    Raises:
        ValueError: an unknown ``name`` or a severity outside 0..3.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0, 1, 2 or 3; got {severity}")
    if severity == 0:
        return images
    entropy = (seed, list(CORRUPTIONS).index(name), severity)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    is_uint8 = images.dtype == torch.uint8
    out = torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK]
        x = chunk.float() / 255 if is_uint8 else chunk.float()
        y = CORRUPTIONS[name](x, severity, gen).clamp(0, 1)
        out[start : start + CHUNK] = (y * 255).round() if is_uint8 else y
    return out


def _with_images(dataset: ImageTensorDataset, images: torch.Tensor) -> ImageTensorDataset:
    """``dataset`` (no augmentation) with its pixels replaced by ``images``."""
    plain = dataset.without_augmentation()
    plain.images = images.to(dataset.images.device)
    return plain


def _scores(
    model: torch.nn.Module,
    dataset: ImageTensorDataset,
    batch_size: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Accuracy and AUC of ``model`` on ``dataset``, each rank running its strided shard."""
    shard = ShardedEvalSampler(len(dataset), world_size=world_size(), rank=rank())
    loader = BatchLoader(dataset, BatchSampler(shard, batch_size, drop_last=False))
    out = collect(model, loader, device, amp_dtype=amp_dtype)
    return {"acc": accuracy(out.logits, out.labels), "auc": auc(out.logits, out.labels)}


def robustness_metrics(
    model: torch.nn.Module,
    dataset: ImageTensorDataset,
    batch_size: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    severities: Sequence[int] = SEVERITIES,
) -> dict:
    """Accuracy and AUC of ``model`` on every corruption of ``dataset`` at each severity.

    Each corrupted copy of the split is evaluated as a clean split is (eval mode, no
    augmentation, :func:`~riftune.metrics.collect`, MedMNIST's AUC). Under an initialized
    ``torch.distributed`` process group every rank corrupts the whole split identically,
    evaluates its strided shard, and gets the gathered result; every rank must call this.

    Args:
        model: a :class:`~riftune.models.classifier.Classifier`, on ``device``.
        dataset: the split to corrupt (the test split), its images uint8 on any device.
        batch_size: images per forward pass on each rank.
        device: where the model runs.
        amp_dtype: autocast dtype of the forward, ``None`` for full precision.
        seed: seed of the random corruptions (the run's seed).
        severities: the severities to evaluate, each in 0..3 (0: the clean split).

    Returns:
        ``{"corruptions": {name: {str(severity): {"acc": a, "auc": u}}}, "mean_acc": ā,
        "mean_auc": ū}``, the means over every corruption and listed severity ≥ 1 (NaN when
        none is listed, and an AUC mean is NaN when some AUC is undefined).
    """
    if not severities or any(s not in (0, *SEVERITIES) for s in severities):
        raise ValueError(f"severities must be a non-empty subset of 0..3; got {severities}")
    clean = dataset.images.cpu()
    clean_scores = (
        _scores(model, dataset.without_augmentation(), batch_size, device, amp_dtype)
        if 0 in severities
        else None
    )
    table: dict[str, dict[str, dict[str, float]]] = {}
    graded: list[dict[str, float]] = []
    for name in CORRUPTIONS:
        table[name] = {}
        for severity in severities:
            if severity == 0:
                table[name]["0"] = dict(clean_scores)
                continue
            corrupted = _with_images(dataset, corrupt(clean, name, severity, seed))
            scores = _scores(model, corrupted, batch_size, device, amp_dtype)
            table[name][str(severity)] = scores
            graded.append(scores)
    return {
        "corruptions": table,
        "mean_acc": float(np.mean([s["acc"] for s in graded])) if graded else math.nan,
        "mean_auc": float(np.mean([s["auc"] for s in graded])) if graded else math.nan,
    }
