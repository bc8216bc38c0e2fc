"""What a run writes besides checkpoints: the per-class table, ``metrics.json``, predictions and TensorBoard figures.

Helpers without Lightning hooks; the ``RunReport`` callback (``callbacks/run_report.py``) decides when they run.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import TensorBoardLogger

from imbcompress.atomic import atomic_write, write_json_atomic
from imbcompress.host import code_revision, describe_host
from imbcompress.names import METRICS_FILE, SCHEMA_VERSION

if TYPE_CHECKING:
    import lightning.pytorch as pl


@dataclass(frozen=True)
class RunInfo:
    """Where the tested weights came from.

    Attributes:
        ckpt_path: The checkpoint given to ``test`` (None: the model in memory, e.g. at the end of fit).
        resumed_from: The checkpoint the fit resumed from (None: a fresh fit).
        init_from: The weights the fit started from (``model.init_from``), if any.
        fit_code: The code of each fit command that trained these weights, first to last (None: no fit known).
    """

    ckpt_path: str | None = None
    resumed_from: str | None = None
    init_from: str | None = None
    fit_code: list[dict[str, Any] | None] | None = None


RUN_PACKAGES = ("imbcompress", "torch", "torchvision", "lightning", "torchmetrics")


def package_versions(packages: tuple[str, ...] = RUN_PACKAGES) -> dict[str, str]:
    """The installed version of each package ("not installed" where absent), for metrics.json."""
    result = {}
    for package in packages:
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


def activation_bits_of(records: list[dict[str, Any]]) -> int | None:
    """The activation bit width a compression record declares (for the paper's size column), if any."""
    bits = [r["activation_bits"] for r in records if isinstance(r.get("activation_bits"), int)]
    return min(bits) if bits else None


def compressed_model_size(model: Any, records: list[dict[str, Any]]) -> dict[str, int | float]:
    """``model_size`` of a compressed model, read against its compression records (``metrics["compression"]``).

    The activation bit width comes from a quantization record, and sparsity is taken relative to the NNZ before
    pruning when a pruning record gives it (pruning removes filters, so the pruned model's own dense count would
    give 0).
    """
    from imbcompress.compress.size import model_size

    before = [r["nnz_before"] for r in records if isinstance(r.get("nnz_before"), int)]
    return model_size(model, activation_bits=activation_bits_of(records), reference_nnz=before[0] if before else None)


def size_line(size: dict[str, int | float]) -> str:
    """One line for the log: parameters, NNZ and weight storage."""
    return (
        f"model size: {size['total_params']:,} parameters, NNZ {size['nnz']:,}, "
        f"weights {size['weight_storage_mib']:.3f} MiB ({size['weight_storage_mibit']:.2f} Mib)"
    )


def build_metrics(
    trainer: pl.Trainer, task: Any, results: dict[str, Any], sections: dict[str, list[dict[str, Any]]], run: RunInfo
) -> dict[str, Any]:
    """The metrics.json document (schema in docs/architecture.md).

    Args:
        trainer: The Trainer that tested.
        task: The tested task (``hparams``, ``model``, ``num_classes``, ``class_names``).
        results: The whole-test-set results.
        sections: ``compression`` and ``remedies`` records.
        run: Where the tested weights came from.
    """
    describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
    data = describe() if callable(describe) else {}
    seed = os.environ.get("PL_GLOBAL_SEED")
    hparams = task.hparams
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": data.get("dataset"),
        "imbalance": data.get("imbalance"),
        "model": {
            "name": hparams.get("arch"),
            "shortcut": hparams.get("shortcut"),
            "classifier": hparams.get("classifier", "linear"),
            "num_classes": task.num_classes,
        },
        "compression": sections.get("compression", []),
        "remedies": sections.get("remedies", []),
        "class_names": task.class_names,
        "train_class_counts": data.get("train_class_counts"),
        "test_class_counts": data.get("test_class_counts"),
        "test": results,
        "model_size": compressed_model_size(task.model, sections.get("compression", [])),
        "seed": int(seed) if seed is not None else None,
        "data": data,
        "ckpt_path": run.ckpt_path,
        "resumed_from": run.resumed_from,
        "init_from": run.init_from,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "versions": package_versions(),
        "code": code_revision(),
        "fit_code": run.fit_code,
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


def report_test_results(
    trainer: pl.Trainer,
    task: Any,
    results: dict[str, Any],
    run_dir: str,
    sections: dict[str, list[dict[str, Any]]],
    run: RunInfo,
) -> dict[str, Any]:
    """Print the per-class table, write ``metrics.json`` to ``run_dir`` and log figures (call on rank 0 only)."""
    metrics = build_metrics(trainer, task, results, sections, run)
    print(format_per_class_table(metrics["class_names"], results, metrics["train_class_counts"]))
    write_json_atomic(Path(run_dir) / METRICS_FILE, metrics)
    print(f"wrote {Path(run_dir) / METRICS_FILE}")
    _log_figures(trainer, metrics["class_names"], results)
    return metrics


def class_count_title(data: dict[str, Any]) -> str:
    """Title of the class-count figure from the data module's ``describe()``."""
    imbalance = data.get("imbalance") or {}
    settings = str(imbalance.get("profile"))
    if imbalance.get("profile") != "balanced":
        settings += f", rho={imbalance.get('ratio'):g}"
    if imbalance.get("minority_classes") is not None:
        settings += f", {imbalance['minority_classes']} minority"
    return f"{data.get('dataset')} training set ({settings}, seed {imbalance.get('seed')})"


def log_class_counts(trainer: pl.Trainer, names: list[str], counts: list[int], title: str) -> None:
    """Log the training-set class counts as a bar chart to every TensorBoard logger (call on rank 0 only)."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers:
        return
    from matplotlib.figure import Figure  # only when a TensorBoard logger wants the figure

    figure = Figure(figsize=(max(6.0, 0.12 * len(names)), 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(len(counts)), counts, color="tab:blue")
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if len(names) > 20 else 8)
    axes.set_ylabel("training images")
    axes.set_title(title, fontsize=9)
    for logger in loggers:
        logger.experiment.add_figure("data/class_distribution", figure, global_step=0)


def write_predictions(path: Path, targets: list[int], predictions: list[int]) -> None:
    """``index,target,prediction`` rows, one per predicted image (atomically)."""
    lines = ["index,target,prediction"] + [f"{i},{t},{p}" for i, (t, p) in enumerate(zip(targets, predictions))]
    atomic_write(path, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
