"""Filter pruning: model size and CPU inference throughput, pruned vs unpruned.

For ResNet-20 (shortcut A) and ResNet-56 (shortcut B) at each [C24] level (unpruned, mild, moderate, severe):
NNZ, sparsity, weight storage in MiB, and images/s at batch 256 in fp32 (NCHW and channels-last, CL) and in bf16
autocast with channels-last (median over interleaved repeats, after one warm-up batch), with the ratio to the
unpruned model in the same mode.

    python3 benchmarks/bench_pruning.py [--repeats 5] [--batch-size 256] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from imbcompress.compress.pruning import plan_kept_filters, prune_filters
from imbcompress.compress.size import model_size
from imbcompress.host import cpu_model
from imbcompress.models import build_model

MODELS = (("resnet20", "A"), ("resnet56", "B"))
LEVELS = ("unpruned", "mild", "moderate", "severe")
MODES = ("fp32", "fp32+CL", "bf16+CL")


def _pruned(name: str, shortcut: str, level: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 10, shortcut)
    if level != "unpruned":
        prune_filters(model, plan_kept_filters(model, preset=level))
    return model.eval()


def _runner(model: nn.Module, mode: str, batch_size: int) -> Callable[[], object]:
    channels_last = mode != "fp32"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=fmt)
    inputs = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=fmt)

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16+CL"):
            return model(inputs)

    return run


def _images_per_second(runs: dict[str, Callable[[], object]], batch_size: int, repeats: int) -> dict[str, float]:
    """Median throughput of each run; the runs are interleaved so a change of machine load hits them all."""
    for run in runs.values():
        run()  # warm-up: allocator, oneDNN primitive creation
    seconds: dict[str, list[float]] = {level: [] for level in runs}
    for _ in range(repeats):
        for level, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[level].append(time.perf_counter() - start)
    return {level: batch_size / statistics.median(values) for level, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# batch {args.batch_size}, median of {args.repeats} interleaved repeats; CL = channels-last\n")
    header = " | ".join(f"{mode} img/s | vs unpruned" for mode in MODES)
    print(f"| model | level | NNZ | sparsity | weight MiB | {header} |")
    print("|---|---|---:|---:|---:|" + "---:|---:|" * len(MODES))
    for name, shortcut in MODELS:
        models = {level: _pruned(name, shortcut, level) for level in LEVELS}
        speed = {
            mode: _images_per_second(
                {level: _runner(model, mode, args.batch_size) for level, model in models.items()},
                args.batch_size,
                args.repeats,
            )
            for mode in MODES
        }
        reference = model_size(models["unpruned"])["nnz"]
        for level, model in models.items():
            size = model_size(model, reference_nnz=reference)
            cells = " | ".join(f"{speed[m][level]:,.0f} | {speed[m][level] / speed[m]['unpruned']:.2f}x" for m in MODES)
            print(
                f"| {name} ({shortcut}) | {level} | {size['nnz']:,} | {100 * size['sparsity']:.1f} % "
                f"| {size['weight_storage_mib']:.3f} | {cells} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
