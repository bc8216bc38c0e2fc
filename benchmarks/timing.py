"""Shared timing loop for the training-step benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from torch import Tensor

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
