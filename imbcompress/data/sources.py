"""Where the images come from: the official CIFAR python pickles and image-folder trees.

Every source gives the whole training and test sets as uint8 ``[N, 3, H, W]`` tensors with int64
labels (:class:`DatasetArrays`); choosing the imbalanced subset happens later, by index.
Image folders are decoded once and cached as an ``.npz`` of uint8 arrays keyed by a fingerprint of
the file list, so a second load takes a fraction of a second. With ``image_size`` every image is brought to
that square size as it is decoded (``imbcompress.data.resize``) and the result is cached per size, next to the
cache of the images' own size.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from imbcompress.atomic import atomic_write
from imbcompress.data.resize import resize_image, resize_tensor_images
from imbcompress.errors import SettingsError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine labels in label order (the official meta file lists them alphabetically).
# fmt: off
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
# fmt: on


@dataclass(frozen=True)
class _CifarLayout:
    directory: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    class_names: tuple[str, ...]
    images_per_class: int


CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        CIFAR10_CLASSES,
        5000,
    ),
    "cifar100": _CifarLayout(
        "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", CIFAR100_CLASSES, 500
    ),
}
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})
CACHE_DIRNAME = ".imbcompress_cache"
_CACHE_FORMAT = 1  # bump when the cache file's content changes


@dataclass(frozen=True)
class DatasetArrays:
    """A whole dataset in memory: uint8 ``[N, 3, H, W]`` images and int64 ``[N]`` labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: list[str]


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without decoding it.

    ``train_class_sizes`` is the number of training images per class when it is cheap to know (image
    folders: file counts), the official size for CIFAR.
    """

    num_classes: int
    class_names: list[str]
    train_class_sizes: list[int]


# --------------------------------------------------------------------------------------------- CIFAR


def _cifar_layout(name: str) -> _CifarLayout:
    if name not in CIFAR_LAYOUTS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(CIFAR_LAYOUTS)}")
    return CIFAR_LAYOUTS[name]


def _cifar_missing(root: str | os.PathLike, layout: _CifarLayout) -> list[str]:
    directory = Path(root) / layout.directory
    wanted = (*layout.train_files, layout.test_file, layout.meta_file)
    return [f for f in wanted if not (directory / f).is_file()]


def _missing_cifar_error(root: str | os.PathLike, name: str, missing: list[str]) -> FileNotFoundError:
    directory = Path(root) / _cifar_layout(name).directory
    return FileNotFoundError(
        f"{name} not found: expected the official python version in {directory} (missing: {', '.join(missing)}). "
        "Set `root` to the directory that contains it, or set `download: true` on a machine with internet access."
    )


def _download_cifar(root: str | os.PathLike, name: str) -> None:
    import torchvision  # only needed here

    dataset_cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    dataset_cls(root=str(root), train=True, download=True)


def _unpickle(path: Path) -> dict:
    # latin1 reads the official (Python 2) pickles with str keys, as torchvision does
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_images(rows: np.ndarray) -> Tensor:
    """Official rows of ``3 * side * side`` bytes (R plane, G plane, B plane) -> ``[N, 3, side, side]``."""
    side = int(round((rows.shape[1] / 3) ** 0.5))
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.uint8).reshape(-1, 3, side, side))


def _read_cifar_batches(directory: Path, files: tuple[str, ...], label_key: str) -> tuple[Tensor, Tensor]:
    batches = [_unpickle(directory / f) for f in files]
    images = torch.cat([_cifar_images(np.asarray(b["data"])) for b in batches])
    labels = torch.cat([torch.as_tensor(np.asarray(b[label_key]), dtype=torch.int64) for b in batches])
    return images, labels


def load_cifar(
    root: str | os.PathLike,
    name: str,
    download: bool = False,
    image_size: int | None = None,
    resize: str = "center_crop",
) -> DatasetArrays:
    """Reads CIFAR-10 or CIFAR-100 (fine labels) from the official python pickles under ``root``.

    Args:
        root: directory containing ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        name: ``cifar10`` or ``cifar100``.
        download: download with torchvision when the files are absent (needs internet access).
        image_size: bring the 32x32 images to this square size (None: keep them as they are).
        resize: the policy of ``imbcompress.data.resize`` (both give the same result on square images).

    Raises:
        FileNotFoundError: when the files are absent and ``download`` is false.
    """
    layout = _cifar_layout(name)
    missing = _cifar_missing(root, layout)
    if missing and download:
        _download_cifar(root, name)
        missing = _cifar_missing(root, layout)
    if missing:
        raise _missing_cifar_error(root, name, missing)
    directory = Path(root) / layout.directory
    train_images, train_labels = _read_cifar_batches(directory, layout.train_files, layout.label_key)
    test_images, test_labels = _read_cifar_batches(directory, (layout.test_file,), layout.label_key)
    class_names = [str(n) for n in _unpickle(directory / layout.meta_file)[layout.names_key]]
    if image_size is not None:
        train_images = resize_tensor_images(train_images, image_size, resize)
        test_images = resize_tensor_images(test_images, image_size, resize)
    return DatasetArrays(train_images, train_labels, test_images, test_labels, class_names)


# --------------------------------------------------------------------------------------- image folders


def _class_dirs(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"image folder split not found: {split_dir} (expected <root>/train/<class>/* and <root>/test/<class>/*); "
            "set `root` to the folder that contains train/ and test/"
        )
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"no class directories in {split_dir}")
    return names


def _image_entries(class_dir: Path) -> list[os.DirEntry]:
    entries = [
        e
        for e in os.scandir(class_dir)
        if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    ]
    return sorted(entries, key=lambda e: e.name)


@dataclass
class _SplitFiles:
    """One split of an image folder: files in class-then-name order, and what fingerprints them."""

    class_names: list[str]
    paths: list[str]
    labels: list[int]
    stamps: list[str]  # relative path, size and modification time of every file


def _scan_split(root: Path, split: str) -> _SplitFiles:
    # Strings and DirEntry.stat() instead of Path objects: scanning 60,000 files stays well under a second.
    files = _SplitFiles(_class_dirs(root / split), [], [], [])
    for label, name in enumerate(files.class_names):
        entries = _image_entries(root / split / name)
        if not entries:
            raise FileNotFoundError(f"class directory {root / split / name} contains no image files")
        for entry in entries:
            stat = entry.stat()
            files.paths.append(entry.path)
            files.stamps.append(f"{split}/{name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
        files.labels.extend([label] * len(entries))
    return files


def _fingerprint(*splits: _SplitFiles, size_tag: str = "") -> str:
    digest = hashlib.sha1(f"imbcompress-image-folder-v{_CACHE_FORMAT}\n{size_tag}".encode())
    for split in splits:
        digest.update("\n".join(split.stamps).encode())
    return digest.hexdigest()[:20]


def _decode(path: str, image_size: int | None = None, resize: str = "center_crop") -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            return np.asarray(rgb if image_size is None else resize_image(rgb, image_size, resize))
    except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified format, "image file is truncated", ...
        # Refused, not skipped: dropping a file would silently change the class counts the study reports.
        raise SettingsError(
            f"data.root: image file {path} cannot be decoded ({err}); it is corrupt or truncated. Replace or delete "
            "it, then run again"
        ) from err


def _decode_all(paths: list[str], image_size: int | None = None, resize: str = "center_crop") -> Tensor:
    # PIL releases the GIL while decoding, so threads give a real speed-up
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda path: _decode(path, image_size, resize), paths))
    shape = arrays[0].shape
    for path, array in zip(paths, arrays):
        if array.shape != shape:
            raise ValueError(
                f"all images of an image folder must share one size: {paths[0]} is {shape[1]}x{shape[0]}, "
                f"{path} is {array.shape[1]}x{array.shape[0]}. Set data.image_size (e.g. 64) to bring every image "
                "to one square size as it is decoded (data.resize: center_crop or stretch)"
            )
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


def _cache_file(root: Path, cache_dir: str | os.PathLike | None, fingerprint: str, size_tag: str = "") -> Path:
    directory = Path(cache_dir) if cache_dir is not None else root / CACHE_DIRNAME
    return directory / f"{root.resolve().name}-{size_tag + '-' if size_tag else ''}{fingerprint}.npz"


def _read_cache(path: Path) -> DatasetArrays | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {
                k: torch.from_numpy(data[k]) for k in ("train_images", "train_labels", "test_images", "test_labels")
            }
            class_names = [str(n) for n in data["class_names"]]
    except (OSError, KeyError, ValueError):
        return None
    return DatasetArrays(class_names=class_names, **arrays)


def _write_cache(path: Path, fingerprint: str, arrays: DatasetArrays) -> None:
    """Writes the cache atomically and removes stale caches of the same folder."""
    try:
        atomic_write(
            path,
            lambda handle: np.savez(
                handle,
                train_images=arrays.train_images.numpy(),
                train_labels=arrays.train_labels.numpy(),
                test_images=arrays.test_images.numpy(),
                test_labels=arrays.test_labels.numpy(),
                class_names=np.array(arrays.class_names),
            ),
        )
    except OSError as error:
        warnings.warn(
            f"could not write the image-folder decode cache {path} ({error}); the folder will be decoded again "
            "next time. Set `cache_dir` to a writable directory.",
            stacklevel=3,
        )
        return
    prefix = path.stem[: -len(fingerprint)]
    for stale in path.parent.glob(f"{prefix}*.npz"):
        # same folder name, another fingerprint (a changed folder): no longer reachable
        if stale != path and len(stale.stem) == len(path.stem):
            stale.unlink(missing_ok=True)


def load_image_folder(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    resize: str = "center_crop",
) -> DatasetArrays:
    """Reads ``root/train/<class>/*`` and ``root/test/<class>/*`` into uint8 tensors, through a decode cache.

    Class labels follow the sorted class directory names; the test split must have the same classes.
    Images are converted to RGB and must all share one size, unless ``image_size`` brings each to that square
    size as it is decoded. The decoded arrays are cached in ``root/.imbcompress_cache/`` (or ``cache_dir``,
    e.g. when ``root`` is read-only) under a fingerprint of the file list, sizes and modification times, so a
    changed folder is decoded again; each ``image_size`` / ``resize`` has its own cache file.

    Args:
        root: the image folder.
        cache_dir: directory for the decode cache instead of ``root/.imbcompress_cache``.
        image_size: side of the square images to make (None: keep the images' own, common size).
        resize: ``center_crop`` or ``stretch`` (``imbcompress.data.resize``).
    """
    root = Path(root)
    train, test = _scan_split(root, "train"), _scan_split(root, "test")
    if test.class_names != train.class_names:
        raise ValueError(
            f"the test classes of {root} differ from the training classes: "
            f"train {train.class_names}, test {test.class_names}"
        )
    size_tag = "" if image_size is None else f"{image_size}{resize}"
    fingerprint = _fingerprint(train, test, size_tag=size_tag)
    cache = _cache_file(root, cache_dir, fingerprint, size_tag)
    if cache.is_file() and (cached := _read_cache(cache)) is not None:
        return cached
    arrays = DatasetArrays(
        _decode_all(train.paths, image_size, resize),
        torch.tensor(train.labels, dtype=torch.int64),
        _decode_all(test.paths, image_size, resize),
        torch.tensor(test.labels, dtype=torch.int64),
        train.class_names,
    )
    if arrays.train_images.shape[1:] != arrays.test_images.shape[1:]:
        raise ValueError(
            f"training images are {tuple(arrays.train_images.shape[1:])} but test images are "
            f"{tuple(arrays.test_images.shape[1:])} in {root}"
        )
    _write_cache(cache, fingerprint, arrays)
    return arrays


# ---------------------------------------------------------------------------------------------- both


def dataset_info(name: str, root: str | os.PathLike, download: bool = False) -> DatasetInfo:
    """Number of classes, class names and training class sizes without decoding any image.

    Also the existence check of the data location: raises ``FileNotFoundError`` with what is missing and
    how to fix it (CIFAR files may be absent when ``download`` is true).

    Args:
        name: ``cifar10``, ``cifar100`` or ``image_folder``.
        root: the dataset's root directory.
        download: whether absent CIFAR files will be downloaded.
    """
    if name == "image_folder":
        train_dir = Path(root) / "train"
        class_names = _class_dirs(train_dir)
        _class_dirs(Path(root) / "test")
        sizes = [len(_image_entries(train_dir / c)) for c in class_names]
        return DatasetInfo(len(class_names), class_names, sizes)
    layout = _cifar_layout(name)
    missing = _cifar_missing(root, layout)
    if missing and not download:
        raise _missing_cifar_error(root, name, missing)
    class_names = list(layout.class_names)
    if not missing:  # the meta file is tiny: prefer the names the files carry
        class_names = [str(n) for n in _unpickle(Path(root) / layout.directory / layout.meta_file)[layout.names_key]]
    return DatasetInfo(len(class_names), class_names, [layout.images_per_class] * len(class_names))
