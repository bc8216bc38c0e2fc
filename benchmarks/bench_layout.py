"""CPU training step by precision and memory layout, and one multi-thread process against single-thread processes.

Which fp32 setting to use on a CPU without native bf16 (where bf16 autocast is emulated and slow): NCHW
(``configs/trainer/fp32.yaml``) or channels-last (``configs/trainer/cpu_fp32.yaml``, the task's default layout),
and whether a study on such a machine should run ``--jobs N`` single-thread fits or one N-thread fit at a time.

Part 1 times a bare ResNet training step (forward, cross-entropy, backward, SGD with momentum; batch 128 of random
CIFAR-shaped images) in every mode of ``timing.STEP_MODES`` asked for (an NCHW batch, made channels-last inside
the step as the task's forward does), interleaved over rounds in one process (``timing.median_step_seconds``), for
each thread count. Part 2 (``--concurrent N``) starts N copies of the fastest single-thread mode at once, one
thread each, and adds their images/s: compare it with Part 1's N-thread row.

    python3 benchmarks/bench_layout.py                            # fp32 NCHW and channels-last, 1 and 2 threads
    python3 benchmarks/bench_layout.py --modes fp32 --threads 2 --concurrent 2   # NCHW only
    python3 benchmarks/bench_layout.py --quick                    # proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from timing import STEP_MODES, Step, median_step_seconds, step_batch, step_mode
from torch import Tensor

from imbcompress.host import cpu_has_native_bf16, cpu_model
from imbcompress.models import build_model

LABELS = {"fp32": ("fp32", "nchw"), "fp32_cl": ("fp32", "channels_last"), "bf16": ("bf16", "channels_last")}
"""A mode's (precision, layout), as the table prints them."""


def make_step(arch: str, mode: str) -> Step:
    """One training step of a fresh model (seed 0) in ``mode``."""
    bf16, channels_last = step_mode(mode)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step(images: Tensor, labels: Tensor) -> None:
        if channels_last:  # as the task's forward does; a ~1.5 MB copy against a step of ~0.3 s
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(arch: str, modes: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Images/s of every mode, interleaved over ``args.rounds`` rounds (``timing.median_step_seconds``)."""
    labels = torch.randint(0, 10, (args.batch_size,), generator=torch.Generator().manual_seed(0))
    runs = {mode: make_step(arch, mode) for mode in modes}
    seconds = median_step_seconds(runs, step_batch(args.batch_size, False), labels, args.rounds, args.steps)
    return {mode: args.batch_size / value for mode, value in seconds.items()}


def worker(args: argparse.Namespace) -> None:
    """One process of Part 2: time one mode with one thread, print its images/s as JSON."""
    torch.set_num_threads(1)
    print(json.dumps({"images_per_second": images_per_second(args.arch, [args.worker], args)[args.worker]}))


def concurrent(args: argparse.Namespace, mode: str) -> list[float]:
    """Start ``args.concurrent`` single-thread workers at once; their images/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--arch", args.arch, "--batch-size", str(args.batch_size)]
    command += ["--rounds", str(args.rounds), "--steps", str(args.steps), "--worker", mode]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.concurrent)]
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a worker failed: {outputs}")
    return [json.loads(out.strip().splitlines()[-1])["images_per_second"] for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--modes", nargs="+", choices=tuple(STEP_MODES), default=["fp32", "fp32_cl"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="Part 1: thread counts to time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--concurrent", type=int, default=2, help="Part 2: single-thread processes at once (0: skip)")
    parser.add_argument("--quick", action="store_true", help="1 thread, 1 round of 1 step, 2 workers: proves it runs")
    parser.add_argument("--worker", choices=tuple(STEP_MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.threads, args.rounds, args.steps, args.batch_size = [1], 1, 1, 16
    if args.worker:
        worker(args)
        return

    print(
        f"# {cpu_model()}, torch {torch.__version__}, native bf16: {cpu_has_native_bf16()}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"# {args.arch}, batch {args.batch_size}, median of {args.rounds} rounds x {args.steps} steps")
    print("| threads | precision | layout | images/s | vs fp32 NCHW |")
    print("|---|---|---|---|---|")
    single: dict[str, float] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates = images_per_second(args.arch, args.modes, args)
        single = rates if threads == 1 else single
        for mode, rate in rates.items():
            ratio = f"{rate / rates['fp32']:.2f}" if "fp32" in rates else "-"
            print(f"| {threads} | {' | '.join(LABELS[mode])} | {rate:.0f} | {ratio} |")
    if args.concurrent > 0:
        mode = max(single or {args.modes[0]: 0.0}, key=lambda name: single.get(name, 0.0))
        rates = concurrent(args, mode)
        each = " + ".join(f"{rate:.0f}" for rate in rates)
        name = ":".join(LABELS[mode])
        print(f"\n{args.concurrent} single-thread processes of {name} at once: {each} = {sum(rates):.0f} images/s")


if __name__ == "__main__":
    main()
