"""Model registry, parameter counts (SPEC §2) and the forward_features / forward_head interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imbcompress.models import MODEL_NAMES, build_model


def conv_linear_weights(model: nn.Module) -> int:
    """The [DI] NNZ rule on a dense model: conv + linear weights, no biases, no BatchNorm."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.mark.parametrize(
    ("name", "shortcut", "expected"),
    [("resnet20", "A", 268_336), ("resnet20", "B", 270_896), ("resnet56", "A", 848_944), ("resnet56", "B", 851_504)],
)
def test_parameter_counts_match_spec(name: str, shortcut: str, expected: int) -> None:
    assert conv_linear_weights(build_model(name, 10, shortcut)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 9), ("resnet32", 15), ("resnet44", 21), ("resnet110", 54)])
def test_resnet_depths(name: str, blocks: int) -> None:
    model = build_model(name, 10)
    assert len(list(model.prunable_blocks())) == blocks
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs + 1 == int(name.removeprefix("resnet"))  # depth = convs (option A) + classifier


def test_resnet_option_b_has_conv_shortcuts_only_where_shapes_change() -> None:
    model = build_model("resnet20", 10, "B")
    shortcut_convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" in n]
    assert shortcut_convs == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_any_class_count(name: str) -> None:
    model = build_model(name, 7).eval()
    images = torch.randn(2, 3, 32, 32)
    features = model.forward_features(images)
    assert features.ndim == 2 and features.shape[0] == 2
    logits = model.forward_head(features)
    assert logits.shape == (2, 7)
    assert torch.allclose(model(images), logits)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == features.shape[1]


def test_mobilenetv2_structure() -> None:
    model = build_model("mobilenetv2", 10)
    assert model.stem.conv.stride == (1, 1)
    assert len(model.blocks) == 17 and len(list(model.prunable_blocks())) == 16
    residual = [block.use_residual for block in model.blocks]
    assert sum(residual) == 10  # stride 1 and in == out: the repeats after the first of each setting


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown; allowed"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("resnet20", 1)
    with pytest.raises(ValueError, match="takes no shortcut option"):
        build_model("mobilenetv2", 10, "A")
    with pytest.raises(ValueError, match="shortcut must be 'A' or 'B'"):
        build_model("resnet20", 10, "C")  # type: ignore[arg-type]
