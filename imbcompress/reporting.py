"""End-of-test reporting: the per-class table, ``metrics.json`` and TensorBoard figures."""

from __future__ import annotations

import datetime as dt
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import TensorBoardLogger

from imbcompress.atomic import write_json_atomic
from imbcompress.host import describe_host
from imbcompress.names import METRICS_FILE, SCHEMA_VERSION

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _versions() -> dict[str, str]:
    result = {}
    for package in ("imbcompress", "torch", "torchvision", "lightning", "torchmetrics"):
        try:
            result[package] = version(package)
        except PackageNotFoundError:
            result[package] = "not installed"
    return result


def _gpu_name(trainer: pl.Trainer) -> str | None:
    """The name of the CUDA device this rank used, or None (CUDA is never touched when training ran elsewhere)."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(device)


def compression_records(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """``compression_record()`` of every callback that compresses, in callback order."""
    callbacks = getattr(trainer, "callbacks", [])
    return [cb.compression_record() for cb in callbacks if callable(getattr(cb, "compression_record", None))]


def activation_bits_of(records: list[dict[str, Any]]) -> int | None:
    """The activation bit width a compression record declares (for the paper's size column), if any."""
    bits = [r["activation_bits"] for r in records if isinstance(r.get("activation_bits"), int)]
    return min(bits) if bits else None


def compressed_model_size(trainer: pl.Trainer, model: Any) -> dict[str, int | float]:
    """``model_size`` of the model being trained, read against the trainer's compression callbacks.

    The activation bit width comes from a quantization record, and sparsity is taken relative to the NNZ before
    pruning when a pruning record gives it (pruning removes filters, so the pruned model's own dense count would
    give 0).
    """
    from imbcompress.compress.size import model_size

    records = compression_records(trainer)
    before = [r["nnz_before"] for r in records if isinstance(r.get("nnz_before"), int)]
    return model_size(model, activation_bits=activation_bits_of(records), reference_nnz=before[0] if before else None)


def build_metrics(trainer: pl.Trainer, task: Any, results: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json document (schema in docs/architecture.md)."""
    describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
    data = describe() if callable(describe) else {}
    records = compression_records(trainer)
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": data.get("dataset"),
        "imbalance": data.get("imbalance"),
        "model": {
            "name": task.hparams.model,
            "shortcut": task.hparams.shortcut,
            "num_classes": task.num_classes,
        },
        "compression": records,
        "class_names": task.class_names,
        "train_class_counts": data.get("train_class_counts"),
        "test_class_counts": data.get("test_class_counts"),
        "test": results,
        "model_size": compressed_model_size(trainer, task.model),
        "seed": int(seed) if seed is not None else None,
        "data": data,
        "ckpt_path": str(trainer.ckpt_path) if trainer.ckpt_path is not None else None,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "versions": _versions(),
        "host": describe_host(_gpu_name(trainer)),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def format_per_class_table(class_names: list[str], results: dict[str, Any], counts: list[int] | None) -> str:
    """A plain-text table: class, training count, precision, recall, F1; then the summary line."""
    per_class = results["per_class"]
    width = max(8, *(len(name) for name in class_names))
    lines = [f"{'class':<{width}} {'train n':>8} {'precision':>9} {'recall':>7} {'f1':>7}"]
    for index, name in enumerate(class_names):
        count = f"{counts[index]:>8d}" if counts else f"{'-':>8}"
        lines.append(
            f"{name:<{width}} {count} {per_class['precision'][index]:>9.4f} "
            f"{per_class['recall'][index]:>7.4f} {per_class['f1'][index]:>7.4f}"
        )
    lines.append(
        f"accuracy {results['accuracy']:.4f}  macro-F1 {results['macro_f1']:.4f}  "
        f"balanced accuracy {results['balanced_accuracy']:.4f}  ({results['num_samples']} test images)"
    )
    return "\n".join(lines)


def _log_figures(trainer: pl.Trainer, class_names: list[str], results: dict[str, Any]) -> None:
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4, 0.5 * len(class_names)), 3))
    axis.bar(range(len(class_names)), results["per_class"]["f1"])
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    axis.set(ylim=(0, 1), ylabel="F1", title="test F1 per class")
    figure.tight_layout()
    confusion_figure, confusion_axis = plt.subplots(figsize=(5, 4.5))
    image = confusion_axis.imshow(results["confusion_matrix"], cmap="viridis")
    confusion_axis.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    confusion_figure.colorbar(image)
    for logger in loggers:
        logger.experiment.add_figure("test/f1_per_class", figure, global_step=trainer.global_step)
        logger.experiment.add_figure("test/confusion_matrix", confusion_figure, global_step=trainer.global_step)
    plt.close(figure)
    plt.close(confusion_figure)


def report_test_results(trainer: pl.Trainer, task: Any, results: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Print the per-class table, write ``metrics.json`` to ``run_dir`` and log figures (call on rank 0 only)."""
    metrics = build_metrics(trainer, task, results)
    print(format_per_class_table(metrics["class_names"], results, metrics["train_class_counts"]))
    write_json_atomic(Path(run_dir) / METRICS_FILE, metrics)
    print(f"wrote {Path(run_dir) / METRICS_FILE}")
    _log_figures(trainer, metrics["class_names"], results)
    return metrics
