"""Training-data throughput: tensor loader + batched augmentation vs a torchvision per-image pipeline.

Both pipelines serve CIFAR-shaped uint8 images (random, 50,000 by default) in shuffled batches of 128 with
random crop (padding 4) + horizontal flip + normalisation, on the CPU:

- ``tensor``: ImbalancedDataModule's training loader (TensorBatchLoader) + its ``on_after_batch_transfer``;
- ``torchvision``: a CIFAR10-style Dataset (PIL image per sample) with ``transforms.Compose`` and a DataLoader,
  with 0 and 2 worker processes.

With ``--image-folder`` (default: the shared JPEG copy at /tmp/data/cifar_jpg, if unpacked) it also times
the first load of the folder (JPEG decode + cache write, into a temporary cache directory) against a
cached load. Prints a table; median over ``--repeats`` runs.

    python benchmarks/bench_data.py [--images 50000] [--batches 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from imbcompress.data import ImbalancedDataModule
from imbcompress.data.sources import CIFAR10_CLASSES, load_image_folder
from imbcompress.host import cpu_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def write_random_cifar10(root: Path, images: int) -> None:
    """Random uint8 images in the official CIFAR-10 python layout (so the data module reads them as usual)."""
    rng = np.random.default_rng(0)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    labels = np.arange(images) % 10
    for i, part in enumerate(np.array_split(np.arange(images), 5), start=1):
        batch = {"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8), "labels": labels[part].tolist()}
        (directory / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), "labels": (np.arange(100) % 10).tolist()}
    (directory / "test_batch").write_bytes(pickle.dumps(test))
    (directory / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))


class PerImageCifar(Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ on in-memory HWC arrays: PIL image -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def batches_per_second(make_batches: Callable[[], Iterable], count: int, step: Callable, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        iterator = iter(make_batches())
        step(next(iterator))  # start-up (worker processes, first epoch order) is not counted
        start = time.perf_counter()
        for _, batch in zip(range(count), iterator):
            step(batch)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def setup_quietly(dm: ImbalancedDataModule) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # not the per-class count table
        dm.setup("fit")


def bench_tensor_pipeline(root: Path, batches: int, repeats: int) -> float:
    dm = ImbalancedDataModule("cifar10", str(root), batch_size=128)
    setup_quietly(dm)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1, current_epoch=0)
    return batches_per_second(dm.train_dataloader, batches, lambda b: dm.on_after_batch_transfer(b, 0), repeats)


def bench_torchvision_pipeline(root: Path, batches: int, repeats: int, workers: int) -> float:
    dm = ImbalancedDataModule("cifar10", str(root))
    setup_quietly(dm)
    images, labels = dm.train_tensors
    images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = PerImageCifar(images_hwc, labels.numpy(), transform)
    persistent = workers > 0

    def loader() -> DataLoader:
        return DataLoader(dataset, batch_size=128, shuffle=True, num_workers=workers, persistent_workers=persistent)

    return batches_per_second(loader, batches, lambda b: None, repeats)


def bench_image_folder(folder: Path, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_image_folder(folder, cache_dir=cache)
        first = time.perf_counter() - start
        cached = []
        for _ in range(repeats):
            start = time.perf_counter()
            load_image_folder(folder, cache_dir=cache)
            cached.append(time.perf_counter() - start)
    return first, statistics.median(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=200, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-folder", type=Path, default=Path("/tmp/data/cifar_jpg"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_random_cifar10(Path(tmp), args.images)
        tensor_rate = bench_tensor_pipeline(Path(tmp), args.batches, args.repeats)
        rows.append(("tensor loader + on_after_batch_transfer", tensor_rate))
        for workers in (0, 2):
            rate = bench_torchvision_pipeline(Path(tmp), args.batches, args.repeats, workers)
            rows.append((f"torchvision transforms + DataLoader, {workers} workers", rate))

    cpu = cpu_model()
    print(
        f"# {args.images} random 3x32x32 uint8 images, batch 128, crop+flip+normalise; CPU, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores ({cpu}); "
        f"torch {torch.__version__}; median of {args.repeats} x {args.batches} batches"
    )
    print("| pipeline | batches/s | images/s | vs tensor |\n|---|---:|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate * 128:,.0f} | {rate / tensor_rate:.2f}x |")

    if (args.image_folder / "train").is_dir():
        first, cached = bench_image_folder(args.image_folder, args.repeats)
        print(f"\n# image folder {args.image_folder} (decode cache in a temporary directory)")
        print("| load | seconds |\n|---|---:|")
        print(f"| first (decode + write cache) | {first:.2f} |")
        print(f"| cached (median of {args.repeats}) | {cached:.2f} |")


if __name__ == "__main__":
    main()
