"""fp32 ONNX export: the same outputs as PyTorch, and a pruned model exports physically smaller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imbcompress.compress.pruning import prune_filters, pruning_record
from imbcompress.deploy.onnx_export import export_onnx
from imbcompress.deploy.ptq import session
from imbcompress.models import build_model


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32))  # non-trivial BatchNorm running statistics
    return model.eval()


@pytest.mark.parametrize("pruned", [False, True])
def test_export_matches_pytorch_within_1e_4(tmp_path: Path, pruned: bool) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    if pruned:
        prune_filters(model, pruning_record({name: 1 for name, _ in model.prunable_blocks()})["kept_filters"])
    _trained_like(model)
    path = export_onnx(model, tmp_path / "m.onnx")
    x = torch.randn(7, 3, 32, 32)  # a batch size other than the exported example's: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(session(path).run(None, {"images": x.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_pruned_model_exports_smaller(tmp_path: Path) -> None:
    dense = build_model("resnet20", 10)
    pruned = build_model("resnet20", 10)
    prune_filters(pruned, pruning_record({name: 1 for name, _ in pruned.prunable_blocks()})["kept_filters"])
    dense_bytes = export_onnx(dense, tmp_path / "dense.onnx").stat().st_size
    pruned_bytes = export_onnx(pruned, tmp_path / "pruned.onnx").stat().st_size
    assert pruned_bytes < 0.5 * dense_bytes


def test_export_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model = build_model("resnet20", 10).train().to(memory_format=torch.channels_last)
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training and model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
