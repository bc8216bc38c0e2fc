"""Inference speed and file size of deployed models: eager fp32, bf16 channels-last, ONNX fp32 and ONNX int8.

For ResNet-20, ResNet-56 (unpruned and severely pruned: one filter kept in every block's first conv) and
MobileNet-V2: throughput at batch 256 and latency at batch 1, with 1 and 2 threads. The variants of one model and
thread count are timed round-robin in one process (benchmarks/timing.py), so load changes hit all alike; each
figure is the median over repeats. int8: ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8
activations) calibrated on random images -- speed does not depend on the calibration data.

    python3 benchmarks/bench_deploy.py                 # the full table (minutes)
    python3 benchmarks/bench_deploy.py --quick         # one small model, few repeats: proves the script runs
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from timing import median_step_seconds
from torch import Tensor, nn

from imbcompress.compress.pruning import prune_filters, pruning_record
from imbcompress.deploy.onnx_export import export_onnx
from imbcompress.deploy.ptq import ImageCalibrationReader, quantize_int8, session
from imbcompress.host import cpu_has_native_bf16, cpu_model
from imbcompress.models import build_model

MODELS = {
    "resnet20": ("resnet20", "A", False),
    "resnet20-severe": ("resnet20", "A", True),
    "resnet56": ("resnet56", "B", False),
    "resnet56-severe": ("resnet56", "B", True),
    "mobilenetv2": ("mobilenetv2", None, False),
}
VARIANTS = ("eager_fp32", "bf16_cl", "onnx_fp32", "onnx_int8")


def build(key: str) -> nn.Module:
    name, shortcut, severe = MODELS[key]
    torch.manual_seed(0)
    model = build_model(name, 10, shortcut)
    if severe:
        prune_filters(model, pruning_record({block: 1 for block, _ in model.prunable_blocks()})["kept_filters"])
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))  # BatchNorm statistics that are not the identity
    return model.eval()


def onnx_files(model: nn.Module, folder: Path, calibration_images: int) -> dict[str, Path]:
    fp32 = export_onnx(model, folder / "fp32.onnx")
    images = torch.randint(0, 256, (calibration_images, 3, 32, 32), dtype=torch.uint8)
    reader = ImageCalibrationReader(images, lambda batch: (batch.float() / 255 - 0.5) / 0.25)
    return {"onnx_fp32": fp32, "onnx_int8": quantize_int8(fp32, folder / "int8.onnx", reader)}


def runners(
    model: nn.Module, files: dict[str, Path], threads: int, variants: list[str]
) -> dict[str, Callable[[Tensor, Tensor], None]]:
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    sessions = {variant: session(path, threads) for variant, path in files.items()}

    def eager(images: Tensor, _: Tensor) -> None:
        with torch.inference_mode():
            model(images)

    def bf16(images: Tensor, _: Tensor) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            channels_last(images.contiguous(memory_format=torch.channels_last))

    def onnx(variant: str) -> Callable[[Tensor, Tensor], None]:
        def run(images: Tensor, _: Tensor) -> None:
            sessions[variant].run(None, {"images": images.numpy()})

        return run

    every = {"eager_fp32": eager, "bf16_cl": bf16, "onnx_fp32": onnx("onnx_fp32"), "onnx_int8": onnx("onnx_int8")}
    return {variant: every[variant] for variant in variants}


def measure(key: str, args: argparse.Namespace, folder: Path) -> list[str]:
    model = build(key)
    files = onnx_files(model, folder / key, args.calibration_images)
    sizes = {"onnx_fp32": files["onnx_fp32"].stat().st_size, "onnx_int8": files["onnx_int8"].stat().st_size}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        run = runners(model, files, threads, args.variants)
        big = torch.randn(args.batch_size, 3, 32, 32)
        one = torch.randn(1, 3, 32, 32)
        throughput = median_step_seconds(run, big, big, args.repeats, args.steps)
        latency = median_step_seconds(run, one, one, args.repeats, args.steps * 10)
        for variant in args.variants:
            size = f"{sizes[variant] / 2**20:8.3f}" if variant in sizes else f"{'-':>8}"
            rows.append(
                f"{key:<16} {variant:<11} {threads:>3} {args.batch_size / throughput[variant]:>10.0f} "
                f"{1000 * latency[variant]:>10.3f} {size}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="batches per timed round (x10 at batch 1)")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma list of {list(VARIANTS)}; default: all, without bf16_cl on a CPU without native bf16 (emulated "
        "there: a MobileNet-V2 batch takes minutes)",
    )
    parser.add_argument("--quick", action="store_true", help="ResNet-20, 1 thread, batch 16, 1 repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.models, args.threads, args.batch_size, args.repeats, args.steps = "resnet20", "1", 16, 1, 1
        args.calibration_images = 16
    args.threads = [int(t) for t in args.threads.split(",")]
    emulated = cpu_has_native_bf16() is False
    default = [v for v in VARIANTS if not (emulated and v == "bf16_cl")]
    args.variants = args.variants.split(",") if args.variants else default
    bad = [variant for variant in args.variants if variant not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    keys = args.models.split(",")
    unknown = [key for key in keys if key not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    print(f"# {cpu_model()}, torch {torch.__version__}, median of {args.repeats} rounds")
    if emulated and "bf16_cl" not in args.variants:
        print("# bf16_cl left out: this CPU has no native bf16 (PyTorch would emulate it); --variants adds it back")
    print(f"# throughput at batch {args.batch_size} (images/s), latency at batch 1 (ms), ONNX file size (MiB)")
    print(f"{'model':<16} {'variant':<11} {'thr':>3} {'img/s':>10} {'lat ms':>10} {'MiB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for key in keys:
            for row in measure(key, args, Path(folder)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
