"""Packed runs: N short ResNet-20 fits at once on one device, aggregate and per-run img/s.

Small CIFAR models leave a large GPU mostly idle; running several fits side by side (what the study runner's
packing does) may multiply the throughput. Each of the N worker processes runs ``Trainer.fit`` of
``ImbalanceClassifier`` on the same generated CIFAR-shaped data (bf16-mixed, channels-last, data on the device),
warms up, then waits until every worker is warm, so that the timed windows overlap. Aggregate img/s is all
timed images over the span from the first timed start to the last timed end; per-run img/s is each worker's own.
On CPU every worker gets ``cpu_count // N`` threads.

    python benchmarks/bench_packing.py --device cuda --runs 1 2 4 8 --steps 200
    python benchmarks/bench_packing.py --quick           # CPU, N = 1 and 2, a few steps: proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of fits run at once")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before the common start")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one packing level")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: N = 1 2, 3 steps, batch 32")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON settings of one worker
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.warmup, args.batch_size, args.train_images = [1, 2], 3, 1, 32, 640
    if min(args.runs) < 1 or args.steps < 2 or args.warmup < 1:
        parser.error("--runs must be >= 1, --steps >= 2 and --warmup >= 1")
    return args


# ------------------------------------------------------------------------------------------------ worker


def run_worker(settings: dict[str, Any]) -> None:
    """One fit; writes its timed window and memory to ``settings["result"]``."""
    import torch
    from lightning.pytorch import Callback, Trainer

    from imbcompress.data import ImbalancedDataModule
    from imbcompress.task import ImbalanceClassifier

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    warmup, steps, cuda = settings["warmup"], settings["steps"], settings["device"] == "cuda"

    class Window(Callback):
        """Marks this worker ready after the warm-up, waits for all, and times the next ``steps`` steps."""

        start = end = 0.0

        def on_train_batch_end(self, trainer: Any, *args: object) -> None:
            done = trainer.global_step
            if done == warmup:
                if cuda:
                    torch.cuda.synchronize()
                wait_for_all(Path(settings["barrier"]), settings["index"], settings["runs"])
                self.start = time.time()
            elif done == warmup + steps:
                if cuda:
                    torch.cuda.synchronize()
                self.end = time.time()

    window = Window()
    datamodule = ImbalancedDataModule(dataset="cifar10", root=settings["root"], batch_size=settings["batch_size"])
    trainer = Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=warmup + steps,
        limit_val_batches=0,
        callbacks=[window],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=settings["workdir"],
    )
    trainer.fit(ImbalanceClassifier(arch=settings["model"], num_classes=10), datamodule=datamodule)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    result = {"start": window.start, "end": window.end, "images": steps * settings["batch_size"], "mib": memory}
    Path(settings["result"]).write_text(json.dumps(result))


def wait_for_all(barrier: Path, index: int, runs: int) -> None:
    """A file barrier across the worker processes (each marks itself ready and waits for the others)."""
    (barrier / f"ready-{index}").touch()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(list(barrier.glob("ready-*"))) < runs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(barrier.glob('ready-*')))} of {runs} workers became ready")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------ parent


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    """Aggregate img/s over the common span, and the mean / min of the per-run img/s."""
    per_run = [r["images"] / (r["end"] - r["start"]) for r in results]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "aggregate": sum(r["images"] for r in results) / span,
        "per_run_mean": statistics.mean(per_run),
        "per_run_min": min(per_run),
    }


def run_level(args: argparse.Namespace, runs: int, root: Path, workdir: Path) -> dict[str, Any]:
    """Start ``runs`` workers at once and wait for them (killed after ``--timeout``)."""
    level = workdir / f"n{runs}"
    (level / "barrier").mkdir(parents=True)
    threads = max(1, (os.cpu_count() or 1) // runs) if args.device == "cpu" else 0
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env |= {"OMP_NUM_THREADS": str(threads)} if threads else {}
    processes = []
    for index in range(runs):
        settings = {
            "index": index, "runs": runs, "device": args.device, "model": args.model, "steps": args.steps,
            "warmup": args.warmup, "batch_size": args.batch_size, "threads": threads, "root": str(root),
            "barrier": str(level / "barrier"), "workdir": str(level / f"w{index}"),
            "result": str(level / f"result-{index}.json"),
        }  # fmt: skip
        log = open(level / f"worker-{index}.log", "w")  # noqa: SIM115 - closed below, after the process ends
        command = [sys.executable, __file__, "--worker", json.dumps(settings)]
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + args.timeout
    for process, log in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    files = [level / f"result-{index}.json" for index in range(runs)]
    if not all(file.is_file() for file in files):
        failed = [str(level / f"worker-{i}.log") for i, file in enumerate(files) if not file.is_file()]
        return {"runs": runs, "error": f"{len(failed)} worker(s) failed or timed out; see {failed[0]}"}
    results = [json.loads(file.read_text()) for file in files]
    memory = [r["mib"] for r in results if r["mib"] is not None]
    return {"runs": runs, **summarize(results), "mib": max(memory) if memory else None}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| runs at once | aggregate img/s | per-run img/s (mean) | per-run img/s (min) | peak MiB per run |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['runs']} | failed: {row['error']} | | | |")
            continue
        mib = f"{row['mib']:.0f}" if row["mib"] is not None else "-"
        lines.append(
            f"| {row['runs']} | {row['aggregate']:.0f} | {row['per_run_mean']:.0f} | {row['per_run_min']:.0f} | {mib} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_training import write_fake_cifar10

    with tempfile.TemporaryDirectory(prefix="bench_packing.") as tmp:
        root = Path(tmp) / "cifar"
        write_fake_cifar10(root, args.train_images, test_images=100)
        print(
            f"# {args.model}, {args.device}, batch {args.batch_size}, bf16-mixed, {args.warmup} warm-up + "
            f"{args.steps} timed steps per run, {os.cpu_count()} CPUs"
        )
        rows = []
        for runs in args.runs:
            rows.append(run_level(args, runs, root, Path(tmp)))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        print(format_table(rows))
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
