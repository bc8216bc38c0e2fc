"""Static int8 post-training quantization with ONNX Runtime, and evaluation of an ONNX model on a test set.

Calibration images come from the training set: drawn uniformly, so the calibration mix is as imbalanced as the
training set (``imbalanced``, the default), or the same number from every class (``balanced``). Weights are int8
per output channel, activations uint8 per tensor (MinMax over the calibration set), QDQ format.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import Tensor

from imbcompress.deploy.onnx_export import INPUT_NAME
from imbcompress.metrics import summarize_confusion

Calibration = Literal["imbalanced", "balanced"]
CALIBRATIONS: tuple[str, ...] = ("imbalanced", "balanced")
Normalize = Callable[[Tensor], Tensor]  # uint8 images -> the float tensor the model takes


def calibration_indices(labels: Tensor, size: int, calibration: str, seed: int) -> Tensor:
    """Indices of the calibration images in a training set with these labels.

    Args:
        labels: Training labels (int64).
        size: Number of calibration images.
        calibration: ``imbalanced``: a uniform draw (the training set's class mix); ``balanced``: ``size / K``
            images of every class (``size`` must be a multiple of K and at most K x the smallest class).
        seed: Seed of the draw.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {list(CALIBRATIONS)}, got {calibration!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(labels):
        raise ValueError(f"calibration_size must be an integer in 1..{len(labels)} (the training images), got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    if calibration == "imbalanced":
        return torch.randperm(len(labels), generator=generator)[:size].sort().values
    counts = torch.bincount(labels.cpu())
    classes = int((counts > 0).sum())
    smallest = int(counts[counts > 0].min())
    if size % classes or size // classes > smallest:
        raise ValueError(
            f"calibration_size={size} with calibration='balanced' must be a multiple of the {classes} classes and "
            f"at most {classes * smallest} ({smallest} images in the smallest class)"
        )
    picked = []
    for label in torch.nonzero(counts).flatten().tolist():
        members = torch.nonzero(labels.cpu() == label).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[: size // classes]])
    return torch.cat(picked).sort().values


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds uint8 calibration images to ONNX Runtime's calibrator in normalised float batches.

    Args:
        images: ``[N, C, H, W]`` uint8 images.
        normalize: The data module's uint8 -> float map (the same the model was trained with).
        batch_size: Images per calibration batch.
    """

    def __init__(self, images: Tensor, normalize: Normalize, batch_size: int = 100) -> None:
        self.images = images
        self.normalize = normalize
        self.batch_size = batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._generate()

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            batch = self.normalize(self.images[start : start + self.batch_size])
            yield {INPUT_NAME: batch.float().contiguous().numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._generate()

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, reader: CalibrationDataReader) -> Path:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax) written atomically."""
    int8_path = Path(int8_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{int8_path.name}.", suffix=".tmp", dir=int8_path.parent)
    os.close(fd)
    try:
        quantize_static(
            str(fp32_path),
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, int8_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return int8_path


def session(path_or_bytes: str | Path | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU inference session (``threads``: intra-op threads, None for ONNX Runtime's default)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    model = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_logits(run: ort.InferenceSession, images: Tensor, normalize: Normalize, batch_size: int = 500) -> Tensor:
    """Logits of every image (uint8 in, normalised batch by batch)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size]).float().contiguous().numpy()
        outputs.append(torch.from_numpy(run.run(None, {INPUT_NAME: batch})[0]))
    return torch.cat(outputs)


def agreement(logits: Tensor, source: Tensor) -> dict[str, float | int | None]:
    """How far the int8 predictions follow the source model's, and how close to a tie the ones that differ were.

    ``source_margin_at_disagreement`` is the largest top-2 logit margin of the *source* model over the images
    whose argmax differs (None when none does); ``share_within_that_margin`` is the fraction of all images with a
    source margin at most that large, i.e. how rare images that close to a tie are.
    """
    differ = logits.argmax(1) != source.argmax(1)
    top2 = source.float().topk(2, dim=1).values
    margins = top2[:, 0] - top2[:, 1]
    worst = float(margins[differ].max()) if bool(differ.any()) else None
    return {
        "agreement_with_source": float((~differ).double().mean()),
        "disagreements": int(differ.sum()),
        "source_margin_at_disagreement": worst,
        "share_within_that_margin": None if worst is None else float((margins <= worst).double().mean()),
    }


def evaluate_logits(logits: Tensor, labels: Tensor, num_classes: int) -> dict:
    """The SPEC §3 metrics of these logits (the ``test`` block of metrics.json), loss included."""
    confusion = torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes**2)
    results = summarize_confusion(confusion.view(num_classes, num_classes))
    results["loss"] = float(F.cross_entropy(logits.float(), labels))
    return results
