"""image_size: images of any size brought to one square size at decode, cached per size; augmentation scaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import make_fake_cifar, make_fake_image_folder
from PIL import Image

from imbcompress.data import ImbalancedDataModule
from imbcompress.data import datamodule as datamodule_module
from imbcompress.data.resize import crop_padding, resize_image
from imbcompress.data.sources import load_image_folder


def _halves(width: int, height: int) -> Image.Image:
    """Left third red, middle third green, right third blue."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    array[:, :third, 0] = array[:, third : 2 * third, 1] = array[:, 2 * third :, 2] = 255
    return Image.fromarray(array)


def test_center_crop_keeps_the_middle_and_stretch_keeps_everything():
    image = _halves(90, 30)
    cropped = np.asarray(resize_image(image, 12, "center_crop"))
    stretched = np.asarray(resize_image(image, 12, "stretch"))
    assert cropped.shape == stretched.shape == (12, 12, 3)
    inner = cropped[:, 1:-1]  # the filter blends the outermost columns with their neighbours
    assert (inner[:, :, 1] == 255).all() and (inner[:, :, [0, 2]] == 0).all()  # only the green middle third
    assert stretched[:, 0, 0].min() == 255 and stretched[:, -1, 2].min() == 255  # red and blue still there
    assert resize_image(image.resize((12, 12)), 12, "center_crop").size == (12, 12)


def test_crop_padding_scales_with_the_side():
    assert [crop_padding(side) for side in (8, 32, 64, 224)] == [1, 4, 8, 28]


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    root = make_fake_image_folder(tmp_path / "mixed", num_classes=3, train_per_class=4, test_per_class=2, size=32)
    _halves(90, 40).save(root / "train" / "class_01" / "wide.png")
    _halves(30, 70).save(root / "test" / "class_02" / "tall.png")
    return root


def test_mixed_sizes_need_image_size_and_are_cached_per_size(mixed_folder: Path):
    with pytest.raises(ValueError, match=r"share one size.*Set data.image_size"):
        ImbalancedDataModule("image_folder", str(mixed_folder)).setup("fit")
    dm = ImbalancedDataModule("image_folder", str(mixed_folder), image_size=24)
    assert dm.image_shape == (3, 24, 24) and dm.describe()["image_size"] == 24
    stretched = load_image_folder(mixed_folder, image_size=24, resize="stretch")
    caches = sorted(path.name for path in (mixed_folder / ".imbcompress_cache").glob("*.npz"))
    assert len(caches) == 2 and "-24center_crop-" in caches[0] and "-24stretch-" in caches[1]
    assert not torch.equal(stretched.train_images, dm.train_tensors[0])  # the wide image differs
    again = load_image_folder(mixed_folder, image_size=24)  # from its cache
    assert torch.equal(again.train_images, load_image_folder(mixed_folder, image_size=24).train_images)


def test_native_size_cache_is_unchanged_by_image_size(tmp_path: Path):
    root = make_fake_image_folder(tmp_path / "f", num_classes=2, train_per_class=3, test_per_class=1, size=16)
    native = load_image_folder(root)
    name = next((root / ".imbcompress_cache").glob("*.npz")).name
    resized = load_image_folder(root, image_size=32)
    assert resized.train_images.shape[2:] == (32, 32) and native.train_images.shape[2:] == (16, 16)
    assert name in [path.name for path in (root / ".imbcompress_cache").glob("*.npz")]  # both caches kept
    dm = ImbalancedDataModule("image_folder", str(root))
    assert "image_size" not in dm.describe() and dm.image_shape == (3, 16, 16)


def test_cifar_with_image_size(tmp_path: Path):
    root = make_fake_cifar(tmp_path, train_per_class=2, test_per_class=1)
    dm = ImbalancedDataModule("cifar10", str(root), image_size=48)
    assert dm.image_shape == (3, 48, 48) and dm.test_dataloader().images.shape[2:] == (48, 48)


def test_augmentation_padding_follows_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_fake_cifar(tmp_path, train_per_class=2, test_per_class=1)
    seen: list[int] = []

    def record(images: torch.Tensor, padding: int, generator: object) -> torch.Tensor:
        seen.append(padding)
        return images

    monkeypatch.setattr(datamodule_module, "random_crop_flip", record)

    class Training:
        training = True

    for image_size, expected in ((None, 4), (64, 8)):
        dm = ImbalancedDataModule("cifar10", str(root), image_size=image_size)
        dm.trainer = Training()  # type: ignore[assignment]
        dm.mean, dm.std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
        images = torch.zeros(2, 3, image_size or 32, image_size or 32, dtype=torch.uint8)
        dm.on_after_batch_transfer((images, torch.zeros(2, dtype=torch.int64)), 0)
        assert seen[-1] == expected


@pytest.mark.parametrize("image_size", [4, 0, 7])
def test_too_small_image_size_is_refused_before_any_work(image_size: int):
    with pytest.raises(ValueError, match=rf"data.image_size={image_size} is too small; allowed: an int >= 8"):
        ImbalancedDataModule("image_folder", "/nonexistent", image_size=image_size)


def test_unknown_resize_is_refused():
    with pytest.raises(ValueError, match="data.resize='crop' is unknown; allowed: center_crop, stretch"):
        ImbalancedDataModule("image_folder", "/nonexistent", image_size=32, resize="crop")  # type: ignore[arg-type]
