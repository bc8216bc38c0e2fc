"""Training throughput: imbcompress `fit` vs a bare PyTorch loop vs the textbook torchvision pipeline.

All three train the same model on the same CIFAR-shaped uint8 tensors (random images, batch 128); the
ratios are measured in one process, interleaved over repeats, and reported as medians. Also: the data path
alone (batches/s) and test-set evaluation time. On a GPU (``--device cuda``) the data stay on the device, both
loops run bf16 autocast + channels-last, and img/s is timed over the whole window between two synchronisations
(CUDA runs asynchronously, so step-to-step host stamps would time kernel launches, not the GPU).

    python benchmarks/bench_training.py --models resnet20 resnet56 --steps 40 --repeats 3
    python benchmarks/bench_training.py --device cuda --skip-textbook --steps 100 --repeats 3
    python benchmarks/bench_training.py --quick    # a few CPU steps: proves it runs
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


def write_fake_cifar10(root: Path, train_images: int, seed: int = 0, test_images: int = 10000) -> None:
    """Random images in the official CIFAR-10 pickle layout (what the data module reads)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = train_images // 5
    for index in range(1, 6):
        labels = rng.integers(0, 10, per_batch).tolist()
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    test_data = rng.integers(0, 256, (test_images, 3072), dtype=np.uint8)
    test = {"data": test_data, "labels": (np.arange(test_images) % 10).tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


class StepTimer(Callback):
    """Wall time at every training-batch end (data, hooks, logging and the step itself); on CUDA see ``stamp``."""

    def __init__(self, device: str = "cpu", warmup: int = 0, steps: int = 0) -> None:
        self.stamps: list[float] = []
        self.device, self.warmup, self.steps = device, warmup, steps

    def on_train_batch_end(self, *args: object) -> None:
        self.stamps.append(stamp(self.device, len(self.stamps), self.warmup, self.steps))


def stamp(device: str, index: int, warmup: int, steps: int) -> float:
    """The time after step ``index``; on CUDA the GPU is synchronised at the two ends of the timed window only."""
    if device == "cuda" and index in (warmup, warmup + steps):
        torch.cuda.synchronize()
    return time.perf_counter()


def step_seconds(stamps: list[float], warmup: int, device: str) -> float:
    """CPU: the median gap between consecutive steps; CUDA: the mean over the synchronised window."""
    if device == "cuda":
        return (stamps[-1] - stamps[warmup]) / (len(stamps) - 1 - warmup)
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]
    return statistics.median(gaps)


def time_imbcompress(root: Path, model: str, steps: int, warmup: int, workdir: Path, device: str = "cpu") -> float:
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), batch_size=128)
    task = ImbalanceClassifier(arch=model, num_classes=10)  # type: ignore[arg-type]
    timer = StepTimer(device, warmup, steps)
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
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
    return step_seconds(timer.stamps, warmup, device)


def time_bare(
    images: torch.Tensor, labels: torch.Tensor, model_name: str, steps: int, warmup: int, device: str = "cpu"
) -> float:
    """The loop a performance-minded user writes by hand: same tensors, same augmentation, same precision."""
    images, labels = images.to(device), labels.to(device)
    model = build_model(model_name, 10).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    order = torch.randperm(len(labels), device=device)
    stamps = []
    for step in range(steps + warmup + 1):
        index = order[step * 128 : (step + 1) * 128]
        batch = normalize(random_crop_flip(images[index]), MEAN, STD).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(batch).float(), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(stamp(device, step, warmup, steps))
    return step_seconds(stamps, warmup, device)


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
    return step_seconds(stamps, warmup, "cpu")


def time_data_path(root: Path, batches: int, device: str = "cpu") -> float:
    """Batches/s of the training loader + on-device augmentation alone."""
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), batch_size=128)
    accelerator = "gpu" if device == "cuda" else "cpu"
    datamodule.trainer = Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False)
    datamodule.trainer.state.fn = "fit"
    datamodule.trainer.training = True
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    for count, batch in enumerate(loader, 1):
        datamodule.on_after_batch_transfer(batch, 0)
        if count == batches:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def time_eval(root: Path, model: str, workdir: Path, device: str = "cpu") -> float:
    datamodule = ImbalancedDataModule(dataset="cifar10", root=str(root), eval_batch_size=1000)
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed",
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
    )
    task = ImbalanceClassifier(arch=model, num_classes=10)  # type: ignore[arg-type]
    datamodule.setup("test")
    start = time.perf_counter()
    trainer.test(task, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=50000)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--skip-textbook", action="store_true", help="leave out the torchvision-style pipeline")
    parser.add_argument("--quick", action="store_true", help="ResNet-20, 3 steps, 1 repeat, small data: proves it runs")
    args = parser.parse_args()
    if args.quick:
        args.models, args.steps, args.warmup, args.repeats, args.train_images = ["resnet20"], 3, 1, 1, 1280
    return args


def machine_line(device: str) -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return f"machine: {cpu_model()}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def measure(args: argparse.Namespace, root: Path, model: str, workdir: Path, data_rate: float) -> str:
    """One table row: the three pipelines interleaved over the repeats, then the test-set evaluation."""
    images, labels = ImbalancedDataModule(dataset="cifar10", root=str(root)).train_tensors
    fit, bare, textbook = [], [], []
    for _ in range(args.repeats):
        fit.append(time_imbcompress(root, model, args.steps, args.warmup, workdir, args.device))
        bare.append(time_bare(images, labels, model, args.steps, args.warmup, args.device))
        if not args.skip_textbook:
            textbook.append(time_textbook(images, labels, model, max(2, args.steps // 2), 1 if args.quick else 2))
    step_fit, step_bare = statistics.median(fit), statistics.median(bare)
    eval_s = time_eval(root, model, workdir, args.device)
    text = "- | -"
    if textbook:
        step_text = statistics.median(textbook)
        text = f"{128 / step_text:.0f} | {step_text / step_fit:.2f}x"
    return (
        f"| {model} | {128 / step_fit:.0f} | {128 / step_bare:.0f} | {step_bare / step_fit:.3f} | "
        f"{text} | {data_rate * step_fit:.0f}x | {eval_s:.1f} |"
    )


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        write_fake_cifar10(root, args.train_images, test_images=1000 if args.quick else 10000)
        print(machine_line(args.device))
        data_rate = statistics.median(
            time_data_path(root, 5 if args.quick else 100, args.device) for _ in range(args.repeats)
        )
        print(f"data path alone: {data_rate:.0f} batches/s (batch 128, {args.device})")
        columns = ["model", "imbcompress fit img/s", "bare loop img/s", "fit / bare", "textbook fp32 img/s"]
        columns += ["fit / textbook", "data path / step", "test-set eval s"]
        print("| " + " | ".join(columns) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for model in args.models:
            print(measure(args, root, model, Path(tmp), data_rate), flush=True)


if __name__ == "__main__":
    main()
