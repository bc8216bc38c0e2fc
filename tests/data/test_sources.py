"""CIFAR pickles and image folders read from generated files in the real formats; the decode cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import make_fake_cifar, make_fake_image_folder
from PIL import Image

from imbcompress.data import sources
from imbcompress.data.sources import CIFAR10_CLASSES, CIFAR100_CLASSES, dataset_info, load_cifar, load_image_folder
from imbcompress.errors import SettingsError


def _first_pixel_is_label(images: torch.Tensor, labels: torch.Tensor) -> bool:
    return torch.equal(images[:, :, 0, 0].long(), labels[:, None].expand(-1, 3))


def test_load_cifar10_reads_the_official_layout(tmp_path: Path) -> None:
    make_fake_cifar(tmp_path, "cifar10", train_per_class=7, test_per_class=3)
    data = load_cifar(tmp_path, "cifar10")
    assert data.train_images.shape == (70, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (30, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64
    assert torch.bincount(data.train_labels).tolist() == [7] * 10
    assert data.class_names == list(CIFAR10_CLASSES)
    assert _first_pixel_is_label(data.train_images, data.train_labels)
    assert _first_pixel_is_label(data.test_images, data.test_labels)


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    make_fake_cifar(tmp_path, "cifar100", train_per_class=2, test_per_class=1)
    data = load_cifar(tmp_path, "cifar100")
    assert torch.bincount(data.train_labels).tolist() == [2] * 100
    assert data.class_names == list(CIFAR100_CLASSES)
    assert _first_pixel_is_label(data.train_images, data.train_labels)


def test_missing_cifar_without_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*Set `root`.*download: true"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        dataset_info("cifar100", tmp_path)


def test_download_only_when_asked_and_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(root: Path, name: str) -> None:
        calls.append(name)
        make_fake_cifar(root, name, train_per_class=1, test_per_class=1)

    monkeypatch.setattr(sources, "_download_cifar", fake_download)
    assert dataset_info("cifar10", tmp_path, download=True).class_names == list(CIFAR10_CLASSES)
    assert calls == []  # dataset_info never downloads
    assert len(load_cifar(tmp_path, "cifar10", download=True).train_labels) == 10
    assert len(load_cifar(tmp_path, "cifar10", download=True).train_labels) == 10
    assert calls == ["cifar10"]


def test_image_folder_labels_follow_sorted_class_directories(tmp_path: Path) -> None:
    make_fake_image_folder(tmp_path, num_classes=3, train_per_class=[4, 3, 2], test_per_class=2)
    data = load_image_folder(tmp_path)
    assert data.class_names == ["class_00", "class_01", "class_02"]
    assert data.train_images.shape == (9, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert torch.bincount(data.train_labels).tolist() == [4, 3, 2]
    assert _first_pixel_is_label(data.train_images, data.train_labels)
    png = np.array(Image.open(tmp_path / "train" / "class_01" / "0002.png"))
    assert torch.equal(data.train_images[4 + 2], torch.from_numpy(png).permute(2, 0, 1))


def test_image_folder_cache_is_reused_and_refreshed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fake_image_folder(tmp_path, num_classes=2, train_per_class=3, test_per_class=1)
    first = load_image_folder(tmp_path)
    caches = list((tmp_path / ".imbcompress_cache").glob("*.npz"))
    assert len(caches) == 1

    def no_decoding(paths: list[Path]) -> torch.Tensor:
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "_decode_all", no_decoding)
        cached = load_image_folder(tmp_path)
    assert torch.equal(cached.train_images, first.train_images) and cached.class_names == first.class_names

    Image.new("RGB", (32, 32), (7, 7, 7)).save(tmp_path / "train" / "class_01" / "extra.png")
    changed = load_image_folder(tmp_path)
    assert torch.bincount(changed.train_labels).tolist() == [3, 4]
    assert [p.name for p in (tmp_path / ".imbcompress_cache").glob("*.npz")] != [caches[0].name]
    assert len(list((tmp_path / ".imbcompress_cache").glob("*.npz"))) == 1  # the stale cache is gone


def test_cache_dir_and_unwritable_cache(tmp_path: Path) -> None:
    root = make_fake_image_folder(tmp_path / "folder", num_classes=2, train_per_class=2, test_per_class=1)
    load_image_folder(root, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    assert not (root / ".imbcompress_cache").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="Set `cache_dir` to a writable directory"):
        data = load_image_folder(root, cache_dir=blocker / "cache")
    assert len(data.train_labels) == 4


def test_image_folder_converts_to_rgb_and_rejects_mixed_sizes(tmp_path: Path) -> None:
    make_fake_image_folder(tmp_path, num_classes=2, train_per_class=2, test_per_class=1, size=8)
    Image.new("L", (8, 8), 200).save(tmp_path / "train" / "class_00" / "gray.png")
    data = load_image_folder(tmp_path)
    gray = data.train_images[2]  # sorted after 0000.png, 0001.png
    assert gray.shape == (3, 8, 8) and bool((gray == 200).all())

    Image.new("RGB", (9, 8)).save(tmp_path / "test" / "class_01" / "wide.png")
    with pytest.raises(ValueError, match=r"share one size.*wide\.png is 9x8"):
        load_image_folder(tmp_path)


def test_image_folder_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train.*set `root`"):
        load_image_folder(tmp_path)
    make_fake_image_folder(tmp_path, num_classes=2, train_per_class=1, test_per_class=1)
    (tmp_path / "test" / "class_01").rename(tmp_path / "test" / "other")
    with pytest.raises(ValueError, match="test classes .* differ from the training classes"):
        load_image_folder(tmp_path)


def test_dataset_info_needs_no_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fake_image_folder(tmp_path / "f", num_classes=3, train_per_class=[5, 2, 1], test_per_class=1)
    make_fake_cifar(tmp_path / "c", "cifar10", train_per_class=1, test_per_class=1)
    monkeypatch.setattr(sources, "_decode_all", None)
    monkeypatch.setattr(sources, "_read_cifar_batches", None)
    folder = dataset_info("image_folder", tmp_path / "f")
    assert (folder.num_classes, folder.class_names, folder.train_class_sizes) == (
        3,
        ["class_00", "class_01", "class_02"],
        [5, 2, 1],
    )
    cifar = dataset_info("cifar10", tmp_path / "c")
    assert (cifar.num_classes, cifar.class_names, cifar.train_class_sizes) == (10, list(CIFAR10_CLASSES), [5000] * 10)
    assert dataset_info("cifar100", tmp_path / "absent", download=True).train_class_sizes == [500] * 100


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_a_corrupt_image_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    root = make_fake_image_folder(tmp_path / "folder", num_classes=2, train_per_class=3, test_per_class=1)
    bad = root / "train/class_01/0001.jpg"
    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(bad, quality=90)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a jpeg at all" * 20)
    with pytest.raises(SettingsError, match=r"data.root: image file .*class_01/0001.jpg cannot be decoded") as err:
        load_image_folder(root)
    assert "corrupt or truncated" in str(err.value)
    assert not (root / sources.CACHE_DIRNAME).exists()  # nothing cached from a refused folder
