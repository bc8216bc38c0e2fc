"""Training throughput: imbcompress `fit` vs a bare PyTorch loop vs the textbook torchvision pipeline.

All three train the same model on the same CIFAR-shaped uint8 tensors (random images, batch 128); the
ratios are measured in one process, interleaved over repeats, and reported as medians. Also: the data path
alone (batches/s) and test-set evaluation time.

    python benchmarks/bench_training.py --models resnet20 resnet56 --steps 40 --repeats 3
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from imbcompress.data import ImbalancedDataModule
from imbcompress.data.augment import normalize, random_crop_flip
from imbcompress.host import cpu_model
from imbcompress.models import build_model
from imbcompress.task import ImbalanceClassifier

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def write_fake_cifar10(root: Path, train_images: int, seed: int = 0) -> None:
    """Random images in the official CIFAR-10 pickle layout (what the data module reads)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = train_images // 5
    for index in range(1, 6):
        labels = rng.integers(0, 10, per_batch).tolist()
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    test = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8), "labels": (np.arange(10000) % 10).tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


class StepTimer(Callback):
    """Wall time between consecutive training-batch ends (data, hooks, logging and the step itself)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        self.stamps.append(time.perf_counter())


def median_step(stamps: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]
    return statistics.median(gaps)


def time_imbcompress(root: Path, model: str, steps: int, warmup: int, workdir: Path) -> float:
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), batch_size=128)
    task = ImbalanceClassifier(arch=model, num_classes=10)  # type: ignore[arg-type]
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=steps + warmup + 1,
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir=workdir,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=20,
    )
    trainer.fit(task, datamodule=datamodule)
    return median_step(timer.stamps, warmup)


def time_bare(images: torch.Tensor, labels: torch.Tensor, model_name: str, steps: int, warmup: int) -> float:
    """The loop a performance-minded user writes by hand: same tensors, same augmentation, same precision."""
    model = build_model(model_name, 10).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    order = torch.randperm(len(labels))
    stamps = []
    for step in range(steps + warmup + 1):
        index = order[step * 128 : (step + 1) * 128]
        batch = normalize(random_crop_flip(images[index]), MEAN, STD).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(batch).float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    return median_step(stamps, warmup)


def time_textbook(images: torch.Tensor, labels: torch.Tensor, model_name: str, steps: int, warmup: int) -> float:
    """torchvision-style dataset of PIL images + per-image transforms + DataLoader, fp32."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images[: 128 * (steps + warmup + 2)]]
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )

    class PilDataset(Dataset):
        def __len__(self) -> int:
            return len(pictures)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return transform(pictures[index]), int(labels[index])

    loader = DataLoader(PilDataset(), batch_size=128, shuffle=True, num_workers=1, persistent_workers=False)
    model = build_model(model_name, 10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    stamps = []
    for step, (batch, target) in enumerate(loader):
        loss = F.cross_entropy(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
        if step >= steps + warmup:
            break
    return median_step(stamps, warmup)


def time_data_path(root: Path, batches: int) -> float:
    """Batches/s of the training loader + on-device augmentation alone."""
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), batch_size=128)
    datamodule.trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    datamodule.trainer.state.fn = "fit"
    datamodule.trainer.training = True
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    for count, batch in enumerate(loader, 1):
        datamodule.on_after_batch_transfer(batch, 0)
        if count == batches:
            break
    return batches / (time.perf_counter() - start)


def time_eval(root: Path, model: str, workdir: Path) -> float:
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), eval_batch_size=1000)
    trainer = Trainer(
        accelerator="cpu", precision="bf16-mixed", default_root_dir=workdir, logger=False, enable_progress_bar=False
    )
    task = ImbalanceClassifier(arch=model, num_classes=10)  # type: ignore[arg-type]
    datamodule.setup("test")
    start = time.perf_counter()
    trainer.test(task, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=50000)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        write_fake_cifar10(root, args.train_images)
        source = ImbalancedDataModule(dataset="cifar10", root=str(root))
        images, labels = source.train_tensors
        machine = cpu_model()
        print(f"machine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        data_rate = statistics.median(time_data_path(root, 100) for _ in range(args.repeats))
        print(f"data path alone: {data_rate:.0f} batches/s (batch 128)")
        columns = ["model", "imbcompress fit img/s", "bare loop img/s", "fit / bare", "textbook fp32 img/s"]
        columns += ["fit / textbook", "data path / step", "test-set eval s"]
        print("| " + " | ".join(columns) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for model in args.models:
            fit, bare, textbook = [], [], []
            for _ in range(args.repeats):
                fit.append(time_imbcompress(root, model, args.steps, args.warmup, Path(tmp)))
                bare.append(time_bare(images, labels, model, args.steps, args.warmup))
                textbook.append(time_textbook(images, labels, model, args.steps // 2, 2))
            step_fit, step_bare, step_text = (statistics.median(v) for v in (fit, bare, textbook))
            eval_s = time_eval(root, model, Path(tmp))
            print(
                f"| {model} | {128 / step_fit:.0f} | {128 / step_bare:.0f} | {step_bare / step_fit:.3f} | "
                f"{128 / step_text:.0f} | {step_text / step_fit:.2f}x | {data_rate * step_fit:.0f}x | {eval_s:.1f} |"
            )


if __name__ == "__main__":
    main()
