"""Deployment export of DoReFa models: uint8 codes + scale/offset reproduce the QAT model exactly."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imbcompress.compress.dorefa import QuantizedReLU, apply_dorefa, dorefa_record
from imbcompress.compress.export import export_quantized, export_task, load_exported
from imbcompress.compress.pruning import prune_filters, pruning_record
from imbcompress.models import build_model

ARCHITECTURE = {"name": "resnet20", "num_classes": 10, "shortcut": "A"}


def _trained_like(model: nn.Module) -> nn.Module:
    # A few training-mode passes give the BatchNorms non-trivial running statistics.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize(("weight_bits", "activation_bits"), [(4, 8), (3, 3), (1, 2), (8, 32)])
def test_round_trip_gives_identical_outputs(tmp_path: Path, weight_bits: int, activation_bits: int) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    record = dorefa_record(model, weight_bits, activation_bits, None)
    apply_dorefa(model, record)
    _trained_like(model)
    path = tmp_path / "model.pt"
    export_quantized(model, path, ARCHITECTURE, [record])

    payload = torch.load(path, weights_only=True)
    entry = payload["quantized"]["layer1.0.conv1.weight"]
    assert entry["codes"].dtype == torch.uint8 and entry["bits"] == weight_bits
    assert "layer1.0.conv1.weight" not in payload["tensors"] and "stem.conv.weight" in payload["tensors"]
    loaded = load_exported(path)
    assert type(loaded.layer1[0].conv1) is nn.Conv2d  # a plain float model
    assert torch.equal(
        loaded.layer1[0].conv1.weight, model.layer1[0].conv1.weight_quantizer(model.layer1[0].conv1.weight)
    )
    assert isinstance(loaded.layer1[0].relu1, QuantizedReLU) == (activation_bits != 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_pruned_then_quantized_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("resnet20", 10)
    pruned = pruning_record({"layer1.0": 2, "layer3.1": 7})
    prune_filters(model, pruned["kept_filters"])
    quantized = dorefa_record(model, 3, 3, None)
    apply_dorefa(model, quantized)
    _trained_like(model)
    export_quantized(model, tmp_path / "m.pt", ARCHITECTURE, [pruned, quantized])
    loaded = load_exported(tmp_path / "m.pt")
    assert loaded.layer3[1].conv1.weight.shape == (7, 64, 3, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_export_refuses_other_quantizers_and_foreign_files(tmp_path: Path) -> None:
    model = build_model("resnet20", 10)
    model.layer1[0].conv1.quantized_by = "climbq"
    with pytest.raises(ValueError, match="DoReFa-quantized models only; 'layer1.0.conv1' is quantized by 'climbq'"):
        export_quantized(model, tmp_path / "m.pt", ARCHITECTURE, [])
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an 'imbcompress.dorefa' v1 export"):
        load_exported(tmp_path / "other.pt")


def test_export_task_reads_the_architecture_from_the_hyperparameters(tmp_path: Path) -> None:
    model = build_model("resnet20", 4, shortcut="B")
    record = dorefa_record(model, 2, 4, None)
    apply_dorefa(model, record)
    _trained_like(model)
    task = SimpleNamespace(
        model=model, hparams={"model": "resnet20", "num_classes": 4, "shortcut": "B"}, transforms=[record]
    )
    export_task(task, tmp_path / "t.pt")
    loaded = load_exported(tmp_path / "t.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(copy.deepcopy(model)(x), model(x))  # quantized models deep-copy (EMA, SWA, ...)
