"""Model-size accounting against hand counts and [C24] Table A7/A8."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from imbcompress.compress.size import dense_weight_count, model_size
from imbcompress.models import build_model


def _truncate(value: float) -> float:
    # [C24] prints Mib figures truncated (not rounded) to two decimals.
    return math.floor(value * 100) / 100


def _set_weight_bits(model: nn.Module, bits: int) -> None:
    """Simulate a quantized model: every conv/linear but the stem conv and the classifier at ``bits``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and name not in ("stem.conv", "classifier"):
            module.weight_bits = bits


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 2, bias=False))


def test_hand_counted_tiny_model():
    model = _tiny()
    with torch.no_grad():
        model[0].weight[0].zero_()  # 2 of the 6 conv weights become zero
    model[3].weight_bits = 4
    size = model_size(model)
    # conv weight 6 (4 nonzero), conv bias 3, BN 3 + 3, linear weight 6.
    assert size["total_params"] == 6 + 3 + 6 + 6
    assert size["nnz"] == 4 + 6
    assert size["dense_weights"] == 12
    assert size["sparsity"] == pytest.approx(2 / 12)
    assert size["weight_storage_bits"] == 4 * 32 + 6 * 4 + (3 + 6) * 32
    assert size["weight_storage_mibit"] == pytest.approx(size["weight_storage_bits"] / 2**20)
    assert size["weight_storage_mib"] == pytest.approx(size["weight_storage_bits"] / 8 / 2**20)
    # paper column: every NNZ at (A + W) / 2 with W the smallest weight width (4) and A = 32 by default.
    assert size["paper_mibit"] == pytest.approx(10 * (4 + 32) / 2 / 2**20)


@pytest.mark.parametrize(
    ("name", "shortcut", "nnz", "fp32", "a8w4", "a3w3"),
    [("resnet20", "A", 268_336, 8.18, 1.53, 0.76), ("resnet56", "B", 851_504, 25.98, 4.87, None)],
)
def test_paper_table_a8(name, shortcut, nnz, fp32, a8w4, a3w3):
    model = build_model(name, 10, shortcut)
    size = model_size(model)
    assert size["nnz"] == size["dense_weights"] == nnz
    assert _truncate(size["paper_mibit"]) == fp32
    _set_weight_bits(model, 4)
    assert _truncate(model_size(model, activation_bits=8)["paper_mibit"]) == a8w4
    if a3w3 is not None:
        _set_weight_bits(model, 3)
        assert _truncate(model_size(model, activation_bits=3)["paper_mibit"]) == a3w3


def test_quantized_storage_counts_stem_and_classifier_at_32_bits():
    model = build_model("resnet20", 10, "A")
    dense = model_size(model)
    _set_weight_bits(model, 4)
    size = model_size(model, activation_bits=8)
    full_precision = 3 * 16 * 9 + 64 * 10  # stem conv + classifier weights
    others = dense["total_params"] - dense["dense_weights"]  # BN and the classifier bias
    expected = (268_336 - full_precision) * 4 + full_precision * 32 + others * 32
    assert size["weight_storage_bits"] == expected
    assert size["nnz"] == dense["nnz"]


def test_torch_prune_masks_count_as_zeros():
    model = build_model("resnet20", 10, "A")
    conv = model.layer1[0].conv1
    prune.l1_unstructured(conv, "weight", amount=100)
    size = model_size(model)
    assert size["nnz"] == 268_336 - 100
    assert size["dense_weights"] == dense_weight_count(model) == 268_336
    # weight_orig is a parameter now, but it is the conv's weight: storage counts it once, at its nonzeros.
    assert size["weight_storage_bits"] == model_size(build_model("resnet20", 10, "A"))["weight_storage_bits"] - 3200


def test_sparsity_against_reference():
    model = _tiny()
    assert model_size(model, reference_nnz=24)["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"activation_bits": 0}, "activation_bits"), ({"reference_nnz": 0}, "reference_nnz")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_size(_tiny(), **kwargs)
