"""CPU training step by precision and memory layout, and one multi-thread process against single-thread processes.

Which fp32 setting to use on a CPU without native bf16 (where bf16 autocast is emulated and slow): NCHW
(``configs/trainer/fp32.yaml``) or channels-last (``configs/trainer/cpu_fp32.yaml``, the task's default layout),
and whether a study on such a machine should run ``--jobs N`` single-thread fits or one N-thread fit at a time.

Part 1 times a bare ResNet training step (forward, cross-entropy, backward, SGD with momentum; batch 128 of random
CIFAR-shaped images) for every precision x layout, interleaved over rounds in one process (median of the rounds),
for each thread count. Part 2 (``--concurrent N``) starts N copies of the fastest fp32 variant at once, one thread
each, and adds their images/s: compare it with Part 1's N-thread row.

    python3 benchmarks/bench_layout.py                            # fp32 x {NCHW, channels-last}, 1 and 2 threads
    python3 benchmarks/bench_layout.py --precisions fp32 bf16 --threads 2 --concurrent 2
    python3 benchmarks/bench_layout.py --quick                    # proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imbcompress.host import cpu_has_native_bf16, cpu_model
from imbcompress.models import build_model

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = ("fp32", "bf16")


def make_step(arch: str, precision: str, layout: str, batch_size: int) -> Callable[[], None]:
    """One training step of a fresh model on a fixed random batch, in the given precision and layout."""
    torch.manual_seed(0)
    memory_format = LAYOUTS[layout]
    model = build_model(arch, num_classes=10).to(memory_format=memory_format)
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def median_images_per_second(steps: dict[str, Callable[[], None]], rounds: int, per_round: int, batch: int):
    """Images/s of every variant: the median over ``rounds`` interleaved rounds of ``per_round`` steps each."""
    for step in steps.values():  # warm-up: allocator, oneDNN primitive caches
        step()
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            seconds[name].append((time.perf_counter() - start) / per_round)
    return {name: batch / statistics.median(values) for name, values in seconds.items()}


def worker(args: argparse.Namespace) -> None:
    """One process of Part 2: time one variant with one thread, print its images/s as JSON."""
    torch.set_num_threads(1)
    precision, layout = args.worker.split(":")
    step = make_step(args.arch, precision, layout, args.batch_size)
    rate = median_images_per_second({"run": step}, args.rounds, args.steps, args.batch_size)["run"]
    print(json.dumps({"images_per_second": rate}))


def concurrent(args: argparse.Namespace, variant: str) -> list[float]:
    """Start ``args.concurrent`` single-thread workers at once; their images/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--arch", args.arch, "--batch-size", str(args.batch_size)]
    command += ["--rounds", str(args.rounds), "--steps", str(args.steps), "--worker", variant]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.concurrent)]
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a worker failed: {outputs}")
    return [json.loads(out.strip().splitlines()[-1])["images_per_second"] for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"])
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="Part 1: thread counts to time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--concurrent", type=int, default=2, help="Part 2: single-thread processes at once (0: skip)")
    parser.add_argument("--quick", action="store_true", help="1 thread, 1 round of 1 step, 2 workers: proves it runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.threads, args.rounds, args.steps, args.batch_size = [1], 1, 1, 16
    if args.worker:
        worker(args)
        return

    native = cpu_has_native_bf16()
    print(
        f"# {cpu_model()}, torch {torch.__version__}, native bf16: {native}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"# {args.arch}, batch {args.batch_size}, median of {args.rounds} rounds x {args.steps} steps")
    print("| threads | precision | layout | images/s | vs fp32 NCHW |")
    print("|---|---|---|---|---|")
    best: tuple[float, str] = (0.0, "fp32:nchw")
    for threads in args.threads:
        torch.set_num_threads(threads)
        steps = {
            f"{precision}:{layout}": make_step(args.arch, precision, layout, args.batch_size)
            for precision in args.precisions
            for layout in args.layouts
        }
        rates = median_images_per_second(steps, args.rounds, args.steps, args.batch_size)
        reference = rates.get("fp32:nchw")
        for name, rate in rates.items():
            precision, layout = name.split(":")
            ratio = f"{rate / reference:.2f}" if reference else "-"
            print(f"| {threads} | {precision} | {layout} | {rate:.0f} | {ratio} |")
            if precision == "fp32" and threads == 1 and rate > best[0]:
                best = (rate, name)
    if args.concurrent > 0:
        variant = best[1]
        rates = concurrent(args, variant)
        each = " + ".join(f"{rate:.0f}" for rate in rates)
        print(f"\n{args.concurrent} single-thread processes of {variant} at once: {each} = {sum(rates):.0f} images/s")


if __name__ == "__main__":
    main()
