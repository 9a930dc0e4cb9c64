"""Image tensor operations: layout, one-time resize, cheap per-item normalization, augmentation.

Images are resized once, when a dataset is loaded, into a uint8 tensor (N, C, S, S), C ∈ {1, 3}.
Per batch only a gather, a cast and one fused multiply-add remain, plus the optional training
augmentation: crop and flip parameters drawn for all items at once, and one batched resampling
where the images live. So data loading stays far cheaper than a training step. Grayscale stays
one channel in memory (a third of the bytes) and becomes three channels in the normalization's
broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images in NumPy layout as a torch tensor in (N, C, H, W) layout.

    Shape:
        images: (N, H, W) or (N, H, W, C), C ∈ {1, 3}.
        output: (N, C, H, W), C = 1 for (N, H, W) input; shares memory when possible.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2)


def resize(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Resize uint8 images to size × size: bilinear, antialiased, rounded back to uint8.

    Antialiasing matters only when shrinking; it then averages over the source pixels that
    each output pixel covers (PIL's bilinear filter does the same, to within one grey level).
    Works in chunks of ``chunk`` images to bound the float32 working memory.

    Shape:
        images: (N, C, H, W) uint8.
        output: (N, C, size, size) uint8, contiguous. The input itself when already that size.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.contiguous()
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        batch = images[start : start + chunk].float()
        scaled = F.interpolate(
            batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + chunk] = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return out


class Normalize:
    """Map uint8 pixels to normalized float32 RGB: ``(x / 255 - mean) / std`` per channel.

    Computed as one fused ``x · 1/(255·std) + (−mean/std)``; a one-channel (grayscale)
    image broadcasts to three channels in the same operation.

    Shape:
        input: (C, H, W) or (B, C, H, W), C ∈ {1, 3}, any real dtype (pixel values 0..255),
            on any device.
        output: (3, H, W) or (B, 3, H, W) float32, on the input's device.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float64)
        std_t = torch.as_tensor(std, dtype=torch.float64)
        if mean_t.shape != (3,) or std_t.shape != (3,):
            raise ValueError(f"mean and std need 3 values (RGB); got {list(mean)}, {list(std)}")
        if not bool(torch.all(std_t > 0)):
            raise ValueError(f"std must be positive; got {list(std)}")
        self.scale = (1.0 / (255.0 * std_t)).float().view(3, 1, 1)
        self.bias = (-mean_t / std_t).float().view(3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        device = pixels.device
        return torch.addcmul(self.bias.to(device), pixels.float(), self.scale.to(device))


CROP_SCALE = (0.8, 1.0)
"""Range of the area share a training crop keeps (random resized crop)."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Range of a training crop's aspect ratio width / height (drawn log-uniformly)."""


class CropDraws(NamedTuple):
    """Random resized crop and horizontal flip parameters, one per item.

    Shape:
        top, left: the crop's first row and column, (N,) int64.
        height, width: the crop's sides, (N,) int64, in 1..S.
        flip: whether the resized crop is mirrored left to right, (N,) bool.
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor

    def take(self, index: torch.Tensor) -> CropDraws:
        """The draws of the items at ``index``. Shape: index (B,) int64 -> fields (B,)."""
        return CropDraws._make(field[index] for field in self)

    def to(self, device: torch.device | str) -> CropDraws:
        """The same draws on ``device``."""
        return CropDraws._make(field.to(device) for field in self)


def draw_crops(
    count: int,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> CropDraws:
    """Light training augmentation's parameters for ``count`` images of side S = ``size``.

    Per item, from five float64 uniforms u₀..u₄ ~ U[0, 1) of ``generator`` (drawn as one
    (5, count) tensor): area A = (s₀ + (s₁ − s₀)·u₀)·S² with (s₀, s₁) = ``scale``; aspect
    r = exp(log r₀ + (log r₁ − log r₀)·u₁) with (r₀, r₁) = ``ratio``; sides
    w = min(S, max(1, round(√(A·r)))) and h = min(S, max(1, round(√(A/r)))) (round half to
    even, as Python's ``round``); offsets top = ⌊u₂·(S − h + 1)⌋ and left = ⌊u₃·(S − w + 1)⌋,
    uniform integers; flip = u₄ < 0.5.

    Shape:
        output: fields (count,), on the CPU.
    """
    u = torch.rand((5, count), generator=generator, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * size * size
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * u[1])
    width = torch.sqrt(area * aspect).round().clamp(1, size).long()
    height = torch.sqrt(area / aspect).round().clamp(1, size).long()
    top = _uniform_integer(u[2], size - height + 1)
    left = _uniform_integer(u[3], size - width + 1)
    return CropDraws(top, left, height, width, u[4] < 0.5)


def _uniform_integer(u: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """⌊u·n⌋, uniform on {0, ..., n − 1} for u ~ U[0, 1). Shape: u, count (N,) -> (N,) int64."""
    return torch.minimum((u * count).long(), count - 1)


def resized_crop_and_flip(images: torch.Tensor, crops: CropDraws) -> torch.Tensor:
    """Each image's crop resized back to S × S with bilinear interpolation, then flipped.

    For every image the same as ``F.interpolate(image[None, :, top : top + h, left : left + w],
    size=(S, S), mode="bilinear", align_corners=False)``, mirrored where ``flip``, but for the
    whole batch at once and where the images live: a separable bilinear of two gathers per
    axis. Along an axis of crop length n, output index d reads source position
    s = max(0, (d + ½)·n/S − ½) (PyTorch's rule), the pixels ⌊s⌋ and min(⌊s⌋ + 1, n − 1) of
    the crop, weighted 1 − (s − ⌊s⌋) and s − ⌊s⌋. (``grid_sample`` differs: it reads past the
    crop's edge instead of repeating it; torchvision's ``resized_crop`` takes one crop per
    batch.)

    Shape:
        images: (B, C, S, S), any real dtype (uint8 pixels 0..255).
        crops: fields (B,), on the images' device.
        output: (B, C, S, S) float32.
    """
    batch, channels, size, _ = images.shape
    full = (batch, channels, size, size)
    rows, next_rows, row_weight = _source_taps(crops.top, crops.height, size)
    cols, next_cols, col_weight = _source_taps(crops.left, crops.width, size)
    mirror = crops.flip[:, None]
    cols, next_cols, col_weight = (
        torch.where(mirror, taps.flip(-1), taps) for taps in (cols, next_cols, col_weight)
    )
    upper = images.gather(2, rows[:, None, :, None].expand(full)).float()
    lower = images.gather(2, next_rows[:, None, :, None].expand(full)).float()
    resampled = torch.lerp(upper, lower, row_weight[:, None, :, None])
    left = resampled.gather(3, cols[:, None, None, :].expand(full))
    right = resampled.gather(3, next_cols[:, None, None, :].expand(full))
    return torch.lerp(left, right, col_weight[:, None, None, :])


def _source_taps(
    start: torch.Tensor, length: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps resizing crops ``start : start + length`` of one axis to ``size``.

    Returns the absolute indices of the lower and upper neighbour and the upper one's
    weight, for every output index (see :func:`resized_crop_and_flip`).

    Shape:
        start, length: (B,) int64.
        output: (B, size) int64, (B, size) int64, (B, size) float32.
    """
    scale = (length.float() / size)[:, None]
    target = torch.arange(size, dtype=torch.float32, device=start.device) + 0.5
    source = (target * scale - 0.5).clamp_(min=0)
    lower = source.long()  # ⌊s⌋: s ≥ 0
    upper = torch.minimum(lower + 1, length[:, None] - 1)
    return start[:, None] + lower, start[:, None] + upper, source - lower
