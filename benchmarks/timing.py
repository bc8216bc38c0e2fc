"""Shared command line and timing loops for the benchmarks (imported by the scripts beside them)."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from imbcompress.host import cpu_model

Step = Callable[[Tensor, Tensor], None]


STEP_MODES = {"bf16": (True, True), "fp32": (False, False), "fp32_cl": (False, True)}
"""Training-step modes: name -> (bf16 autocast, channels-last). ``fp32_cl`` is the fast fp32 of a CPU without
native bf16 (docs/performance.md); ``fp32`` is NCHW."""


def step_mode(mode: str) -> tuple[bool, bool]:
    """``(bf16 autocast, channels-last)`` of a ``--modes`` entry."""
    if mode not in STEP_MODES:
        raise SystemExit(f"--modes: unknown mode {mode!r} (allowed: {', '.join(STEP_MODES)})")
    return STEP_MODES[mode]


def step_batch(batch_size: int, channels_last: bool) -> Tensor:
    """A fixed batch of random 32x32 images, in the layout of the mode."""
    images = torch.randn(batch_size, 3, 32, 32)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


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
    parser.add_argument(
        "--modes", default=default_modes, help="comma list of bf16 (autocast + channels-last), fp32 (NCHW), fp32_cl"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, use with --threads 1)",
    )
    args = parser.parse_args()
    for mode in args.modes.split(","):
        step_mode(mode)  # an unknown mode fails before any timing
    torch.set_num_threads(args.threads)
    args.clock_fn = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"# {cpu_model()}, {args.threads} threads, {args.clock} clock, torch {torch.__version__}")
    print(f"# ResNet-20, batch {args.batch_size}, median of {args.repeats} rounds x {args.steps} steps")
    return args


def inference_runner(model: nn.Module, mode: str, batch_size: int, image_size: int = 32) -> Callable[[], object]:
    """One inference pass of a copy of ``model`` on a fixed random batch: ``fp32`` or ``bf16+CL`` (autocast +
    channels-last; any mode but ``fp32`` is channels-last)."""
    fmt = torch.contiguous_format if mode == "fp32" else torch.channels_last
    model = copy.deepcopy(model).to(memory_format=fmt)
    inputs = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=fmt)

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16+CL"):
            return model(inputs)

    return run


def images_per_second(runs: dict[str, Callable[[], object]], batch_size: int, repeats: int) -> dict[str, float]:
    """Median throughput of each run; the runs are interleaved so a change of machine load hits them all."""
    for run in runs.values():
        run()  # warm-up: allocator, oneDNN primitive creation
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(values) for name, values in seconds.items()}
