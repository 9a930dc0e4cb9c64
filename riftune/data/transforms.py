"""Image tensor operations: layout, one-time resize, cheap per-item normalization, augmentation.

Images are resized once, when a dataset is loaded, into a uint8 tensor (N, C, S, S), C ∈ {1, 3}.
Per item only a cast and one fused multiply-add remain (plus the optional augmentation), so
data loading stays far cheaper than a training step. Grayscale stays one channel in memory
(a third of the bytes) and becomes three channels in the normalization's broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def flip_and_crop(
    image: torch.Tensor,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Light training augmentation: a random resized crop, then a horizontal flip (p = 0.5).

    The crop covers a share of the area drawn from ``scale`` with an aspect ratio drawn
    log-uniformly from ``ratio`` (clipped to the image), and is resized back to the input
    size with bilinear interpolation. All draws come from ``rng``.

    Shape:
        image: (C, S, S) uint8.
        output: (C, S, S) float32, pixel values 0..255 (normalize afterwards).
    """
    _, height, width = image.shape
    area = rng.uniform(*scale) * height * width
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    crop_w = min(width, max(1, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(math.sqrt(area / aspect))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    crop = image[None, :, top : top + crop_h, left : left + crop_w].float()
    out = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out
