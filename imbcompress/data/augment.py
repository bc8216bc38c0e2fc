"""Batched image operations that run where the batch is (CPU or GPU), one kernel per batch.

The standard CIFAR training augmentation (zero padding + random crop, random horizontal flip) done
on a whole ``[N, C, H, W]`` batch at once instead of image by image in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pads every image by ``padding`` pixels, takes a random HxW crop and flips it with probability 1/2.

    Equivalent to torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()`` per image, but done
    with one gather for the whole batch (no loop over images). Works on uint8 (pad with black, as torchvision
    does before normalisation) and float images.

    Args:
        images: ``[N, C, H, W]`` batch, any dtype and device.
        padding: pixels of zero padding on every side; crop offsets are uniform in ``0..2*padding``.
        generator: optional generator on ``images.device`` for reproducible draws.

    Returns:
        A new ``[N, C, H, W]`` tensor of the same dtype and device.
    """
    if images.dim() != 4:
        raise ValueError(f"expected a [N, C, H, W] batch, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), device=device, generator=generator)
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images

    rows = offsets[:, :1] + torch.arange(h, device=device)  # [N, H]
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + offsets[:, 1:]  # [N, W], reversed when flipped
    # one gather over each padded image's flattened pixels: ~10x faster on CPU than 4-d advanced indexing
    source = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, source).view(n, c, h, w)


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Maps uint8 images (0..255) to float32 ``(x / 255 - mean) / std`` per channel.

    Args:
        images: ``[N, C, H, W]`` uint8 batch.
        mean: per-channel mean in [0, 1] units (sequence or tensor of C values).
        std: per-channel standard deviation in [0, 1] units.

    Returns:
        float32 tensor on the images' device.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    # one fused affine map: x * (1 / (255 std)) - mean / std
    return torch.addcmul(-mean_t / std_t, images.to(torch.float32), 1.0 / (255.0 * std_t))


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and (population) standard deviation of uint8 images, in [0, 1] units.

    Uses a 256-bin histogram per channel, so it is exact and cheap even for the whole CIFAR training set.

    Args:
        images: ``[N, C, H, W]`` uint8 tensor with N >= 1.

    Returns:
        ``(mean, std)``, each a list of C floats.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
    hist = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(images.shape[1])])
    hist = hist.to("cpu", torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = hist.sum(1)
    mean = (hist * values).sum(1) / total
    var = (hist * values**2).sum(1) / total - mean**2
    return mean.tolist(), var.clamp_min(0).sqrt().tolist()
