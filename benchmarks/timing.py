"""Shared command line and timing loop for the training-step benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from imbcompress.host import cpu_model

Step = Callable[[Tensor, Tensor], None]


def median_step_seconds(
    runs: dict[str, Step],
    images: Tensor,
    labels: Tensor,
    repeats: int,
    steps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per step of every variant, interleaved over ``repeats`` rounds after one warm-up step each."""
    for run in runs.values():  # warm-up: allocator, oneDNN primitive caches
        run(images, labels)
    times: dict[str, list[float]] = {variant: [] for variant in runs}
    for _ in range(repeats):
        for variant, run in runs.items():
            start = clock()
            for _ in range(steps):
                run(images, labels)
            times[variant].append((clock() - start) / steps)
    return {variant: statistics.median(values) for variant, values in times.items()}


def parse_step_args(description: str, default_modes: str) -> argparse.Namespace:
    """The options every training-step benchmark takes; sets the thread count and prints the header lines.

    ``args.clock_fn`` is the clock to pass to :func:`median_step_seconds`.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", default=default_modes, help="comma list of bf16 (autocast + channels_last), fp32")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, use with --threads 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.clock_fn = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"# {cpu_model()}, {args.threads} threads, {args.clock} clock, torch {torch.__version__}")
    print(f"# ResNet-20, batch {args.batch_size}, median of {args.repeats} rounds x {args.steps} steps")
    return args
