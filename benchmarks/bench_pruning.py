"""Filter pruning: model size and CPU inference throughput, pruned vs unpruned.

For ResNet-20 (shortcut A) and ResNet-56 (shortcut B) at each [C24] level (unpruned, mild, moderate, severe):
NNZ, sparsity, weight storage in MiB, and images/s at batch 256 in fp32 (NCHW and channels-last, CL) and in bf16
autocast with channels-last (median over interleaved repeats, after one warm-up batch), with the ratio to the
unpruned model in the same mode.

    python3 benchmarks/bench_pruning.py [--repeats 5] [--batch-size 256] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from timing import images_per_second, inference_runner
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
            mode: images_per_second(
                {level: inference_runner(model, mode, args.batch_size) for level, model in models.items()},
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
