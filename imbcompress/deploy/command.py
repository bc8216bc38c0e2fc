"""``imbcompress export`` and ``imbcompress ptq``: a run's checkpoint to ONNX / int8, and PTQ as a method.

Every setting is checked (files, output place, calibration options, int8 expressibility) before any work, and
nothing is left half-written: files are written atomically, ``metrics.json`` last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from imbcompress.atomic import atomic_write, write_json_atomic
from imbcompress.checkpoint import load_checkpoint_file, module_from_checkpoint
from imbcompress.compress.size import model_size
from imbcompress.deploy import dorefa_int8, ptq
from imbcompress.deploy.onnx_export import deployable_copy, export_onnx
from imbcompress.host import code_revision, describe_host
from imbcompress.reporting import package_versions

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1
INT8_FILE = "model_int8.onnx"
DEFAULT_CALIBRATION_SIZE = 500


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"imbcompress {command}",
        description="Export a run's checkpoint to ONNX (fp32, or int8 with --int8)."
        if command == "export"
        else "PTQ as a method: quantize an FP32 checkpoint to int8 (or convert a DoReFa one exactly), evaluate the "
        "int8 ONNX model with ONNX Runtime on the test set and write RUN_DIR/metrics.json.",
    )
    parser.add_argument("--config", required=True, help="the run's config.yaml (its data section builds the data)")
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to export (e.g. RUN/checkpoints/last.ckpt)")
    if command == "export":
        parser.add_argument("--out", required=True, help="the .onnx file to write")
        parser.add_argument("--int8", action="store_true", help="static int8 quantization (QDQ, per-channel)")
    else:
        parser.add_argument("--run_dir", required=True, help="where model_int8.onnx and metrics.json go")
    parser.add_argument(
        "--calibration",
        choices=ptq.CALIBRATIONS,
        default="imbalanced",
        help="calibration images: a uniform draw from the training set (its class mix), or the same number per class",
    )
    parser.add_argument("--calibration_size", type=int, default=DEFAULT_CALIBRATION_SIZE, help="calibration images")
    parser.add_argument("--calibration_seed", type=int, default=None, help="default: the run's seed_everything")
    parser.add_argument("--data_root", default=None, help="override the config's data root (data moved)")
    return parser


# ----------------------------------------------------------------------------------------------- checks
def _check_checkpoint(path: str) -> dict[str, Any]:
    checkpoint = load_checkpoint_file(path, setting="ckpt_path")
    hparams = checkpoint.get("hyper_parameters")
    if (
        not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(hparams, dict)
        or not {"arch", "model"} & set(hparams)
    ):
        raise ValueError(
            f"ckpt_path={path!r} is not an imbcompress model checkpoint (no state_dict and model hyperparameters); "
            "pass a run's checkpoints/last.ckpt"
        )
    return checkpoint


def _check_writable_file(setting: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{setting}={str(path)!r} is a directory; name the file to write")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{setting}={str(path)!r} cannot be written: {str(parent)!r} is not a writable directory")


def _check_run_dir(run_dir: Path) -> None:
    if (run_dir / METRICS_FILE).exists():
        raise ValueError(f"run_dir={str(run_dir)!r} already has a {METRICS_FILE}; use a new run directory")
    _check_writable_file("run_dir", run_dir / METRICS_FILE)


def read_config(path: str) -> dict[str, Any]:
    """A run's config.yaml as a dict (the ``--config`` of ``export`` / ``ptq``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config={path!r}: no such file")
    config = yaml.safe_load(file.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise ValueError(f"config={path!r} has no data section; pass the run's config.yaml")
    return config


# ----------------------------------------------------------------------------------------------- loading
def load_model(ckpt_path: str) -> tuple[Any, torch.nn.Module]:
    """The task (hyperparameters, transforms) and its model from a checkpoint, compression replayed."""
    from imbcompress.task import ImbalanceClassifier

    task = module_from_checkpoint(ImbalanceClassifier, ckpt_path, "ckpt_path")  # tensors only (weights_only)
    return task, deployable_copy(task.model)


def build_datamodule(config: dict[str, Any], data_root: str | None) -> Any:
    """The run's data module, from the config's data section (class path and init args, validated by jsonargparse)."""
    from jsonargparse import ArgumentParser

    from imbcompress.data import ImbalancedDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ImbalancedDataModule, "data")
    data = dict(config["data"])
    if data_root is not None:
        data["init_args"] = dict(data.get("init_args") or {}, root=data_root)
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


def normalizer(datamodule: Any) -> ptq.Normalize:
    """The data module's own evaluation-time uint8 -> float map (``on_after_batch_transfer`` without a trainer)."""
    datamodule.train_tensors  # noqa: B018 - loads the data and sets the normalisation statistics

    def normalize(images: torch.Tensor) -> torch.Tensor:
        return datamodule.on_after_batch_transfer((images, None), 0)[0]

    return normalize


# ----------------------------------------------------------------------------------------------- int8
def _calibration_seed(args: argparse.Namespace, config: dict[str, Any]) -> int:
    return args.calibration_seed if args.calibration_seed is not None else int(config.get("seed_everything") or 0)


def calibration_plan(args: argparse.Namespace, config: dict[str, Any], datamodule: Any) -> tuple[Any, dict]:
    """The calibration reader and the PTQ compression record (checks the calibration settings; writes nothing)."""
    images, labels = datamodule.train_tensors
    seed = _calibration_seed(args, config)
    picked = ptq.calibration_indices(labels.cpu(), args.calibration_size, args.calibration, seed)
    reader = ptq.ImageCalibrationReader(images[picked].cpu(), normalizer(datamodule))
    record = {
        "method": "ptq_int8",
        "calibration": args.calibration,
        "calibration_size": args.calibration_size,
        "calibration_seed": seed,
        "calibration_class_counts": torch.bincount(labels[picked].cpu(), minlength=datamodule.num_classes).tolist(),
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, per tensor, MinMax over the calibration images",
        "weight_bits": 8,
        "activation_bits": 8,
    }
    return reader, record


def write_int8(model: torch.nn.Module, out: Path, task: Any, calibration: tuple[Any, dict] | None) -> dict:
    """Write the int8 ONNX model; return what was done (the compression record, without measurements).

    A DoReFa model is converted exactly (``calibration`` None); any other model is quantized with the calibration
    reader of :func:`calibration_plan`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        data = dorefa_int8.dorefa_int8_bytes(model)
        atomic_write(out, lambda handle: handle.write(data))
        source = next(r for r in task.transforms if r.get("kind") == "dorefa")
        bits = {key: source[key] for key in ("weight_bits", "activation_bits")}
        return {"method": "dorefa_int8", **bits, "format": "QDQ", "calibration": None}
    reader, record = calibration
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        ptq.quantize_int8(fp32, out, reader)
    return dict(record)


def _int8_inputs(args: argparse.Namespace, config: dict, model: torch.nn.Module) -> tuple[Any, tuple | None]:
    """The data module (None when not needed) and the calibration plan (None for an exact DoReFa conversion)."""
    dorefa_int8.check_int8_expressible(model)
    needs_data = getattr(args, "run_dir", None) is not None or not dorefa_int8.is_dorefa_quantized(model)
    datamodule = build_datamodule(config, args.data_root) if needs_data else None
    if dorefa_int8.is_dorefa_quantized(model):
        return datamodule, None
    return datamodule, calibration_plan(args, config, datamodule)


def _prepare(args: argparse.Namespace, out: Path, setting: str) -> tuple[dict, Any, torch.nn.Module]:
    """Every check that needs no heavy work, then the model; raises before anything is written."""
    _check_checkpoint(args.ckpt_path)
    config = read_config(args.config)
    if args.calibration_size < 1:
        raise ValueError(f"calibration_size must be >= 1, got {args.calibration_size}")
    _check_writable_file(setting, out)
    task, model = load_model(args.ckpt_path)
    return config, task, model


def export_main(words: list[str]) -> int:
    """``imbcompress export``."""
    args = _parser("export").parse_args(words)
    out = Path(args.out)
    config, task, model = _prepare(args, out, "out")
    if args.int8:
        _, calibration = _int8_inputs(args, config, model)
        record = write_int8(model, out, task, calibration)
        print(f"wrote {out} (int8: {record['method']}, {out.stat().st_size:,} bytes)")
        return 0
    export_onnx(model, out)
    print(f"wrote {out} (fp32, {out.stat().st_size:,} bytes)")
    return 0


# ----------------------------------------------------------------------------------------------- ptq run
def _int8_model_size(task: Any, model: torch.nn.Module, record: dict, file: Path) -> dict[str, Any]:
    from imbcompress.models import build_model

    marked = deployable_copy(model)
    for module in marked.modules():
        quantized = record["method"] == "ptq_int8" or getattr(module, "quantized_by", None) is not None
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and quantized:
            setattr(module, "weight_bits", 8)  # noqa: B010 - what the int8 file stores, whatever grid the codes lie on
    hp = task.hparams
    reference = int(model_size(build_model(hp["arch"], hp["num_classes"], hp.get("shortcut")))["nnz"])
    size: dict[str, Any] = dict(model_size(marked, activation_bits=8, reference_nnz=reference))
    size["file_bytes"] = file.stat().st_size
    size["storage_rule"] = (
        "weight_storage_*: arithmetic (SPEC §5) with the int8 file's weights at 8 bits and other parameters at 32; "
        "file_bytes: the int8 ONNX file on disk (graph, scales and zero points included)"
    )
    return size


def ptq_main(words: list[str]) -> int:
    """``imbcompress ptq``: write RUN_DIR/model_int8.onnx and RUN_DIR/metrics.json."""
    args = _parser("ptq").parse_args(words)
    code_revision()  # asked at the start, as for fit: the code this command loaded
    run_dir = Path(args.run_dir)
    _check_run_dir(run_dir)
    config, task, model = _prepare(args, run_dir / INT8_FILE, "run_dir")
    datamodule, calibration = _int8_inputs(args, config, model)
    record = write_int8(model, run_dir / INT8_FILE, task, calibration)
    normalize = normalizer(datamodule)
    images, labels = whole_test_set(datamodule)
    logits = ptq.onnx_logits(ptq.session(run_dir / INT8_FILE), images.cpu(), normalize)
    with torch.no_grad():
        source = torch.cat([model(normalize(images[i : i + 500].cpu())) for i in range(0, len(images), 500)])
    record.update(ptq.agreement(logits, source))
    record["source_compression"] = [r.get("kind") for r in task.transforms]
    results = ptq.evaluate_logits(logits, labels.cpu(), datamodule.num_classes)
    metrics = _metrics_document(args, config, task, datamodule, record, results)
    metrics["model_size"] = _int8_model_size(task, model, record, run_dir / INT8_FILE)
    from imbcompress.reporting import format_per_class_table

    print(format_per_class_table(metrics["class_names"], results, metrics["train_class_counts"]))
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    print(f"wrote {run_dir / METRICS_FILE}")
    return 0


def whole_test_set(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and the labels of the data module's whole (balanced) test set."""
    batches = list(datamodule.test_dataloader())  # uint8 images and labels of the whole balanced test set
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _metrics_document(
    args: argparse.Namespace, config: dict, task: Any, datamodule: Any, record: dict, results: dict
) -> dict[str, Any]:
    data = datamodule.describe()
    hp = task.hparams
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": data["dataset"],
        "imbalance": data["imbalance"],
        "model": {
            "name": hp["arch"],
            "shortcut": hp.get("shortcut"),
            "classifier": hp.get("classifier", "linear"),
            "num_classes": hp["num_classes"],
        },
        "compression": [record],
        "class_names": data["class_names"],
        "train_class_counts": data["train_class_counts"],
        "test_class_counts": data["test_class_counts"],
        "test": results,
        "seed": int(config.get("seed_everything") or 0),
        "data": data,
        "ckpt_path": str(args.ckpt_path),
        "precision": "int8 (ONNX Runtime, CPU)",
        "world_size": 1,
        "versions": package_versions(("imbcompress", "torch", "onnx", "onnxruntime", "lightning")),
        "code": code_revision(),
        "host": describe_host(None),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
