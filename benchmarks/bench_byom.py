"""Bring your own model: CPU inference throughput of a timm (or torchvision) model, pruned vs unpruned.

Each level ([C24]'s presets, or any target sparsity) is pruned with FilterPruning's Torch-Pruning engine (the
built-in planner and mean-|w| ranking, the dependency graph for what shrinks with each filter) from the same random
initialisation. Prints NNZ, sparsity, weight storage, and images/s at the given image size in fp32 and in bf16
autocast with channels-last (median over interleaved repeats, after one warm-up batch), with the ratio to the
unpruned model in the same mode.

    python3 benchmarks/bench_byom.py [--arch timm:mobilenetv3_small_100] [--image-size 64] [--batch-size 64]
        [--levels moderate,severe] [--repeats 5] [--threads N]
    python3 benchmarks/bench_byom.py --quick      # seconds: proves the script runs (tiny model, image and batch)
"""

from __future__ import annotations

import argparse

import torch
from timing import images_per_second, inference_runner
from torch import nn

from imbcompress.compress.pruning import PRESETS
from imbcompress.compress.pruning_tp import plan_graph_record
from imbcompress.compress.size import model_size
from imbcompress.compress.transforms import apply_transform
from imbcompress.host import cpu_model
from imbcompress.models import build_model

MODES = ("fp32", "bf16+CL")
QUICK = {"arch": "timm:mobilenetv3_small_050", "image_size": 32, "batch_size": 4, "repeats": 1, "levels": "severe"}


def _target(level: str) -> dict[str, object]:
    return {"preset": level} if level in PRESETS else {"target_sparsity": float(level)}


def _pruned(arch: str, num_classes: int, image_size: int, level: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, num_classes)
    if level != "unpruned":
        apply_transform(model, plan_graph_record(model, input_size=(3, image_size, image_size), **_target(level)))
    return model.eval()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="timm:mobilenetv3_small_100", help="timm:<name>, torchvision:<name>, ...")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--levels", default="mild,moderate,severe", help="comma list of presets or target sparsities")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help=f"a seconds-long check that the script runs: {QUICK}")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    return args


def main() -> None:
    args = _arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = ["unpruned", *[level.strip() for level in args.levels.split(",") if level.strip()]]
    print(f"# {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# {args.arch}, {args.num_classes} classes, {args.image_size}x{args.image_size} images, batch "
          f"{args.batch_size}, median of {args.repeats} interleaved repeats; CL = channels-last\n")  # fmt: skip
    models = {level: _pruned(args.arch, args.num_classes, args.image_size, level) for level in levels}
    runs = {mode: {level: inference_runner(m, mode, args.batch_size, args.image_size) for level, m in models.items()}
            for mode in MODES}  # fmt: skip
    speed = {mode: images_per_second(runs[mode], args.batch_size, args.repeats) for mode in MODES}
    header = " | ".join(f"{mode} img/s | vs unpruned" for mode in MODES)
    print(f"| level | NNZ | sparsity | weight MiB | {header} |")
    print("|---|---:|---:|---:|" + "---:|---:|" * len(MODES))
    reference = model_size(models["unpruned"])["nnz"]
    for level, model in models.items():
        size = model_size(model, reference_nnz=reference)
        cells = " | ".join(f"{speed[m][level]:,.0f} | {speed[m][level] / speed[m]['unpruned']:.2f}x" for m in MODES)
        print(f"| {level} | {size['nnz']:,} | {100 * size['sparsity']:.1f} % | {size['weight_storage_mib']:.3f} "
              f"| {cells} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
