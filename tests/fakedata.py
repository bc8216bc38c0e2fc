"""Tiny datasets in the real on-disk formats, generated per test run (tests never touch the network).

- :func:`make_fake_cifar`: the official CIFAR-10 / CIFAR-100 python pickles.
- :func:`make_fake_image_folder`: a ``train/<class>/*.png`` + ``test/<class>/*.png`` tree.

Pixel values are random but reproducible (a fixed seed per file set), and every image's first pixel row
encodes its class, so a test can check that images and labels stay together.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from imbcompress.data.sources import CIFAR10_CLASSES, CIFAR100_CLASSES

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


def _per_class(value: int | list[int], num_classes: int) -> list[int]:
    counts = [value] * num_classes if isinstance(value, int) else list(value)
    if len(counts) != num_classes:
        raise ValueError(f"expected {num_classes} per-class counts, got {len(counts)}")
    return counts


def fake_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Random uint8 ``[N, 3, size, size]`` images whose top-left pixel (all channels) equals the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 3, size, size), dtype=np.uint8)
    images[:, :, 0, 0] = labels[:, None].astype(np.uint8)
    return images


def _shuffled_labels(counts: list[int], seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)  # the official files are not sorted by class
    return labels


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(labels: np.ndarray, size: int, seed: int, label_key: str) -> dict:
    images = fake_images(labels, size, seed)
    return {"data": images.reshape(len(labels), -1), label_key: labels.tolist(), "batch_label": "fake"}


def make_fake_cifar(
    root: str | os.PathLike,
    dataset: str = "cifar10",
    train_per_class: int | list[int] = 20,
    test_per_class: int | list[int] = 5,
    size: int = 32,
) -> Path:
    """Writes a tiny CIFAR-10 or CIFAR-100 in the official python format under ``root``.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` (the training images split over five files),
    ``test_batch``, ``batches.meta``. CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta`` with fine
    (and coarse) labels. Class names are the real ones.

    Args:
        root: directory to write into (created if needed).
        dataset: ``cifar10`` or ``cifar100``.
        train_per_class: training images per class (int, or one count per class).
        test_per_class: test images per class (int, or one count per class).
        size: image side in pixels (32 in the real sets).

    Returns:
        ``root`` as a Path, ready to pass as the data module's ``root``.
    """
    root = Path(root)
    names = CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_CLASSES
    if dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    k = len(names)
    train_labels = _shuffled_labels(_per_class(train_per_class, k), seed=1)
    test_labels = _shuffled_labels(_per_class(test_per_class, k), seed=2)
    if dataset == "cifar10":
        directory = root / CIFAR10_DIR
        directory.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(train_labels, 5), start=1):
            _dump(directory / f"data_batch_{i}", _cifar_batch(part, size, 10 + i, "labels"))
        _dump(directory / "test_batch", _cifar_batch(test_labels, size, 20, "labels"))
        _dump(directory / "batches.meta", {"label_names": list(names), "num_cases_per_batch": 10000, "num_vis": 3072})
        return root
    directory = root / CIFAR100_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, labels, seed in (("train", train_labels, 30), ("test", test_labels, 31)):
        batch = _cifar_batch(labels, size, seed, "fine_labels")
        batch["coarse_labels"] = (labels // 5).tolist()
        _dump(directory / name, batch)
    coarse = [f"superclass_{i}" for i in range(20)]
    _dump(directory / "meta", {"fine_label_names": list(names), "coarse_label_names": coarse})
    return root


def make_fake_image_folder(
    root: str | os.PathLike,
    num_classes: int = 3,
    train_per_class: int | list[int] = 20,
    test_per_class: int | list[int] = 5,
    size: int = 32,
) -> Path:
    """Writes ``root/{train,test}/class_XX/NNNN.png`` with lossless PNG images.

    Args:
        root: directory to write into (created if needed).
        num_classes: number of classes; directories ``class_00``, ``class_01``, ... (sorted = label order).
        train_per_class: training images per class (int, or one count per class).
        test_per_class: test images per class (int, or one count per class).
        size: image side in pixels.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    for split, per_class, seed in (("train", train_per_class, 40), ("test", test_per_class, 50)):
        for label, count in enumerate(_per_class(per_class, num_classes)):
            directory = root / split / f"class_{label:02d}"
            directory.mkdir(parents=True, exist_ok=True)
            images = fake_images(np.full(count, label), size, seed + label)
            for i, image in enumerate(images):
                Image.fromarray(image.transpose(1, 2, 0)).save(directory / f"{i:04d}.png")
    return root
