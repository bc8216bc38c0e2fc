"""Deployment export of a DoReFa-quantized model: integer weight codes plus an affine map per layer.

The file is a ``torch.save`` dict of tensors and plain values (it loads with ``weights_only=True``)::

    {
      "format": "imbcompress.dorefa", "version": 1,
      "architecture": {"name": "resnet20", "num_classes": 10, "shortcut": "A", "classifier": "linear"},
      "transforms": [...],                      # structural records to replay first (e.g. filter pruning)
      "activations": {"layer1.0.relu1": 8},     # module name -> activation bits of each quantized ReLU
      "quantized": {"layer1.0.conv1.weight": {"bits": 4, "codes": uint8 tensor, "scale": fp32, "offset": fp32}},
      "tensors": {"stem.conv.weight": fp32 tensor, ...},  # every other state-dict entry, full precision
    }

A quantized weight is ``W_q = scale * codes + offset`` computed in fp32 (:func:`dorefa.dequantize`), bit for bit the
weight the QAT model uses in its forward pass. See docs/quantization.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imbcompress.compress import dorefa
from imbcompress.compress.transforms import apply_transform
from imbcompress.models.heads import set_classifier
from imbcompress.models.registry import build_model

FORMAT = "imbcompress.dorefa"
VERSION = 1


def _check_exportable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        owner = getattr(module, "quantized_by", None)
        if owner not in (None, dorefa.METHOD):
            raise ValueError(f"export supports DoReFa-quantized models only; {name!r} is quantized by {owner!r}")


def export_payload(model: nn.Module, architecture: dict[str, Any], transforms: list[dict[str, Any]]) -> dict[str, Any]:
    """The export dict of ``model`` (see the module docstring).

    Args:
        model: The (possibly pruned) DoReFa-quantized model.
        architecture: ``build_model`` arguments (``name``, ``num_classes``, ``shortcut``) and ``classifier``
            (:func:`imbcompress.models.heads.set_classifier`).
        transforms: The structural records applied to ``model`` in order (the task's ``transforms``).
    """
    _check_exportable(model)
    quantized: dict[str, dict[str, Any]] = {}
    activations: dict[str, int] = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if isinstance(quantizer, dorefa.WeightQuantizer):
            codes, scale, offset = dorefa.weight_codes(module.weight, quantizer.bits)
            prefix = f"{name}." if name else ""
            quantized[prefix + "weight"] = {
                "bits": quantizer.bits,
                "codes": codes.cpu(),
                "scale": scale.cpu(),
                "offset": offset.cpu(),
            }
        elif isinstance(module, dorefa.QuantizedReLU):
            activations[name] = module.bits
    tensors = {
        key: value.detach().cpu().contiguous() for key, value in model.state_dict().items() if key not in quantized
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": dict(architecture),
        "transforms": [record for record in transforms if record.get("kind") != dorefa.METHOD],
        "activations": activations,
        "quantized": quantized,
        "tensors": tensors,
    }


def export_quantized(
    model: nn.Module, path: str | Path, architecture: dict[str, Any], transforms: list[dict[str, Any]]
) -> None:
    """Write the export file of ``model`` to ``path`` (arguments as :func:`export_payload`)."""
    torch.save(export_payload(model, architecture, transforms), Path(path))


def export_task(task: Any, path: str | Path) -> None:
    """Export an ``ImbalanceClassifier`` (anything with ``model``, ``hparams`` and ``transforms``)."""
    hparams = task.hparams
    architecture = {
        "name": hparams.get("arch", hparams.get("model")),  # "model" in checkpoints before the rename
        "num_classes": hparams["num_classes"],
        "shortcut": hparams.get("shortcut"),
        "classifier": hparams.get("classifier", "linear"),
    }
    export_quantized(task.model, path, architecture, task.transforms)


def _dequantized(entry: dict[str, Any]) -> Tensor:
    return dorefa.dequantize(entry["codes"], entry["scale"], entry["offset"])


def model_from_payload(payload: dict[str, Any]) -> nn.Module:
    """Rebuild a plain float model (``nn.Conv2d`` with the dequantized weights) from an export dict."""
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ValueError(f"not an {FORMAT!r} v{VERSION} export: format={payload.get('format')!r}")
    architecture = dict(payload["architecture"])
    classifier = architecture.pop("classifier", "linear")  # absent in exports written before the cosine classifier
    model = build_model(**architecture)
    set_classifier(model, classifier)
    for record in payload["transforms"]:
        apply_transform(model, record)
    for name, bits in payload["activations"].items():
        model.set_submodule(name, dorefa.QuantizedReLU(bits))
    state = dict(payload["tensors"])
    state.update({key: _dequantized(entry) for key, entry in payload["quantized"].items()})
    model.load_state_dict(state)
    return model.eval()


def load_exported(path: str | Path) -> nn.Module:
    """Load an export file (safely, ``weights_only=True``) into a plain float model in eval mode."""
    return model_from_payload(torch.load(Path(path), map_location="cpu", weights_only=True))
