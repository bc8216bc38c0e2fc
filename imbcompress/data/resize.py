"""Bringing images of any size to one square size, once, when they are decoded (``data.image_size``).

Two policies (``data.resize``):

- ``center_crop`` (default): scale so that the shorter side is ``image_size`` (aspect ratio kept), then cut the
  central ``image_size`` x ``image_size`` square. Nothing is distorted; the borders of the longer side are lost.
- ``stretch``: scale both sides to ``image_size``. Everything stays in the picture; a non-square image is distorted.

Scaling is PIL's bilinear filter, antialiased when shrinking. The result is what training and testing see, so the
per-image work is done once and cached with the decoded folder (``imbcompress.data.sources``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ResizeMode = Literal["center_crop", "stretch"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
MIN_IMAGE_SIZE = 8
REFERENCE_SIDE = 32  # the CIFAR side the standard augmentation was designed for
REFERENCE_PADDING = 4  # its crop padding in pixels: 1/8 of the side


def check_image_size(image_size: int | None, resize: str) -> None:
    """Raise ``ValueError`` naming the setting unless ``image_size`` is unset or an int >= 8 and ``resize`` known."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE):
        raise ValueError(
            f"data.image_size={image_size!r} is too small; allowed: an int >= {MIN_IMAGE_SIZE} (the side of the square "
            "images the model sees), or unset to keep the images' own size"
        )
    if resize not in RESIZE_MODES:
        raise ValueError(f"data.resize={resize!r} is unknown; allowed: {', '.join(RESIZE_MODES)}")


def crop_padding(side: int) -> int:
    """Zero padding of the random-crop augmentation for images of ``side`` pixels: 4 at 32 (CIFAR), 1/8 of the side."""
    return max(1, round(REFERENCE_PADDING * side / REFERENCE_SIDE))


def resize_image(image: Image.Image, image_size: int, resize: str) -> Image.Image:
    """One PIL image brought to ``image_size`` x ``image_size`` by the ``resize`` policy (module docstring)."""
    width, height = image.size
    if (width, height) == (image_size, image_size):
        return image
    if resize == "stretch":
        return image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    scale = image_size / min(width, height)
    scaled = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    left, top = (scaled[0] - image_size) // 2, (scaled[1] - image_size) // 2
    box = (left / scale, top / scale, (left + image_size) / scale, (top + image_size) / scale)
    return image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)


def resize_tensor_images(images: Tensor, image_size: int, resize: str) -> Tensor:
    """uint8 ``[N, 3, H, W]`` images brought to ``image_size`` (e.g. the CIFAR pickles), with the same PIL filter."""
    if tuple(images.shape[2:]) == (image_size, image_size):
        return images

    def one(array: np.ndarray) -> np.ndarray:
        return np.asarray(resize_image(Image.fromarray(array), image_size, resize))

    arrays = images.permute(0, 2, 3, 1).numpy()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        resized = list(pool.map(one, arrays))
    return torch.from_numpy(np.stack(resized).transpose(0, 3, 1, 2).copy())
