"""Export of a trained or compressed model to an fp32 ONNX file (legacy TorchScript exporter, one file)."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from imbcompress.atomic import atomic_write

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
IMAGE_SHAPE = (3, 32, 32)


def deployable_copy(model: nn.Module) -> nn.Module:
    """A float32, contiguous-format, eval-mode copy of ``model`` (the caller's model is left as it was)."""
    return copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()


def onnx_bytes(model: nn.Module, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> bytes:
    """The ONNX serialisation of ``model`` (eval mode) with a dynamic batch axis.

    The legacy TorchScript exporter (``dynamo=False``) is used on purpose: for these small CNNs it writes one
    self-contained file in about a second, folds BatchNorm into the preceding convolution in eval mode and needs no
    ``onnxscript``; the dynamo exporter took ~6x longer here and split the weights into an external data file.
    """
    model = deployable_copy(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the legacy exporter announces its own deprecation, and notes each constant it cannot fold (Slice steps)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(
            model,
            (torch.zeros(1, *image_shape),),
            buffer,  # type: ignore[arg-type]  # the legacy exporter writes to any binary file object
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buffer.getvalue()


def export_onnx(model: nn.Module, path: str | Path, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> Path:
    """Write ``model`` as an fp32 ONNX file to ``path`` atomically (a pruned model exports its smaller tensors).

    Args:
        model: Any model of the registry, plain, pruned or with fake-quant modules (exported as their float graph).
        path: The ``.onnx`` file to write.
        image_shape: ``(C, H, W)`` of one input image.
    """
    data = onnx_bytes(model, image_shape)
    atomic_write(path, lambda handle: handle.write(data))
    return Path(path)
