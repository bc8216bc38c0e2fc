"""How long a study would take at a measured throughput (``study plan --throughput FILE``).

The throughput is read from a measurement file, never assumed. A run's work is its training images: epochs (from its
parsed fit configuration) x the images of its training set (the imbalance profile's class counts, less the
validation split, cut by ``limit_train_batches``). Evaluation passes are not counted, so the estimate is a lower
bound; a PTQ run trains nothing and counts 0. The study's wall time is a simulation of the scheduler: runs in plan
order, each on the first slot that is free once its dependencies have finished.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imbcompress.study.plan import Plan, Run
from imbcompress.study.validate import check_remedies, checked_config, shape

THROUGHPUT_KEYS = ("images_per_s_per_run", "runs_per_gpu", "gpus", "device", "source")


@dataclass(frozen=True)
class Throughput:
    """A measured training throughput.

    Args:
        images_per_s_per_run: training images per second of one run while ``runs_per_gpu`` run on each GPU.
        runs_per_gpu: runs packed on each GPU during the measurement (the study's slots are ``gpus`` x this).
        gpus: GPUs the study would use.
        device: what was measured (e.g. the GPU model), printed with the estimate.
        source: where the number comes from (the benchmark command and date), printed with the estimate.
    """

    images_per_s_per_run: float
    runs_per_gpu: int = 1
    gpus: int = 1
    device: str = ""
    source: str = ""


def load_throughput(path: str | Path) -> Throughput:
    """Read and check a throughput file (JSON with :class:`Throughput`'s keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--throughput {path}: cannot read it as JSON: {error}") from None
    if not isinstance(data, dict) or "images_per_s_per_run" not in data:
        raise ValueError(f"--throughput {path}: expected a JSON object with images_per_s_per_run (img/s of one run)")
    unknown = [key for key in data if key not in THROUGHPUT_KEYS]
    if unknown:
        raise ValueError(f"--throughput {path}: unknown key {unknown[0]!r} (allowed: {', '.join(THROUGHPUT_KEYS)})")
    for key in ("images_per_s_per_run", "runs_per_gpu", "gpus"):
        value = data.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"--throughput {path}: {key}: invalid value {value!r} (allowed: a number > 0)")
    return Throughput(**data)


def _limited(images: int, batch_size: int, limit: Any) -> int:
    if limit is None or limit == 1.0:
        return images
    if isinstance(limit, float):
        return int(images * limit)
    return min(images, int(limit) * batch_size)


def run_images(run: Run, config: Any, classes: int, per_class: int) -> int:
    """Training images one run sees: its epochs x its training set, or ``max_steps`` x the batch if that ends first."""
    from imbcompress.data.imbalance import class_counts  # pure; imports torch, as the parse already did

    variant = run.variant
    counts = class_counts(
        variant["profile"], classes, per_class, variant["ratio"], variant["minority_classes"], variant["head"]
    )
    data = config.data.init_args
    per_epoch = int(sum(counts) * (1 - float(data.get("val_fraction") or 0.0)))
    per_epoch = _limited(per_epoch, int(data.batch_size), config.trainer.get("limit_train_batches"))
    epochs, steps = config.trainer.get("max_epochs"), config.trainer.get("max_steps")
    by_epochs = per_epoch * int(epochs) if epochs is not None and epochs >= 0 else None
    by_steps = int(steps) * int(data.batch_size) if steps is not None and steps > 0 else None  # whichever ends first
    if by_epochs is None and by_steps is None:
        raise ValueError(
            f"run {run.id}: its configuration sets neither trainer.max_epochs nor trainer.max_steps, "
            "so its length is unknown"
        )
    return min(n for n in (by_epochs, by_steps) if n is not None)


def makespan(plan: Plan, seconds: dict[str, float], slots: int) -> float:
    """Wall time of the plan on ``slots`` concurrent slots (plan order, dependencies first)."""
    finish: dict[str, float] = {}
    free = [0.0] * slots
    for run in plan.runs:
        ready = max((finish[dep] for dep in run.deps if dep in finish), default=0.0)
        slot = min(range(slots), key=lambda k: max(free[k], ready))
        finish[run.id] = max(free[slot], ready) + seconds[run.id]
        free[slot] = finish[run.id]
    return max(finish.values(), default=0.0)


def estimate(plan: Plan, throughput: Throughput, classes: int = 10, per_class: int = 5000) -> dict[str, Any]:
    """Images and hours per method, and the study's estimated wall time at ``throughput``.

    Args:
        plan: the expanded study.
        throughput: the measured throughput.
        classes: classes of the dataset (CIFAR-10: 10).
        per_class: training images per class of the balanced dataset (CIFAR-10: 5000).
    """
    check_remedies(plan)
    configs: dict[tuple, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imbcompress-estimate-") as scratch:
        for run in plan.runs:
            if run.kind == "fit" and shape(run) not in configs:
                config, error = checked_config(run, Path(scratch))
                if error is not None:
                    raise ValueError(f"run {run.id}: its fit configuration is invalid: {error}")
                configs[shape(run)] = config
    images = {
        run.id: run_images(run, configs[shape(run)], classes, per_class) if run.kind == "fit" else 0
        for run in plan.runs
    }
    seconds = {rid: count / throughput.images_per_s_per_run for rid, count in images.items()}
    methods: dict[str, dict[str, float]] = {}
    for run in plan.runs:
        row = methods.setdefault(run.config, {"runs": 0, "images": 0, "run_hours": 0.0})
        row["runs"] += 1
        row["images"] += images[run.id]
        row["run_hours"] += seconds[run.id] / 3600
    slots = throughput.gpus * throughput.runs_per_gpu
    return {
        "methods": methods,
        "run_hours": sum(seconds.values()) / 3600,
        "slots": slots,
        "wall_hours": makespan(plan, seconds, slots) / 3600,
    }


def describe_estimate(plan: Plan, result: dict[str, Any], throughput: Throughput, classes: int, per_class: int) -> str:
    """The estimate as text: the inputs, one line per method (configuration, with remedies), the totals."""
    width = max([20, *(len(name) for name in result["methods"])])
    lines = [
        f"study {plan.name}: {len(plan.runs)} runs; throughput {throughput.images_per_s_per_run:g} img/s per run with "
        f"{throughput.runs_per_gpu} run(s) per GPU on {throughput.gpus} GPU(s) ({result['slots']} slots)"
        + (f", {throughput.device}" if throughput.device else "")
        + (f" [{throughput.source}]" if throughput.source else ""),
        f"dataset: {classes} classes x {per_class} training images per class before imbalance; training images "
        "only (evaluation not counted: a lower bound)",
        f"{'method':<{width}} {'runs':>5} {'images (M)':>11} {'run-hours':>10}",
    ]
    for name, row in result["methods"].items():
        lines.append(f"{name:<{width}} {row['runs']:>5} {row['images'] / 1e6:>11.1f} {row['run_hours']:>10.1f}")
    hours = result["wall_hours"]
    lines.append(
        f"total {result['run_hours']:.1f} run-hours; estimated wall time {hours:.1f} h ({hours / 24:.1f} days)"
        if math.isfinite(hours)
        else "no runs"
    )
    return "\n".join(lines)
