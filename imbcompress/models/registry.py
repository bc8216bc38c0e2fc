"""Build a model by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

from imbcompress.models.mobilenetv2 import MobileNetV2
from imbcompress.models.resnet_cifar import CifarResNet

ModelName = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "mobilenetv2"]


def _resnet(blocks_per_stage: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int, shortcut: Literal["A", "B"] = "A") -> nn.Module:
        return CifarResNet(blocks_per_stage, num_classes=num_classes, shortcut=shortcut)

    return factory


def _mobilenetv2(num_classes: int, shortcut: Literal["A", "B"] | None = None) -> nn.Module:
    # MobileNet-V2 has no shortcut option; accepting (and ignoring) None keeps one call signature.
    if shortcut is not None:
        raise ValueError(f"model 'mobilenetv2' takes no shortcut option, got shortcut={shortcut!r} (leave it unset)")
    return MobileNetV2(num_classes=num_classes)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {f"resnet{6 * n + 2}": _resnet(n) for n in (3, 5, 7, 9, 18)} | {
    "mobilenetv2": _mobilenetv2
}
MODEL_NAMES = tuple(_REGISTRY)


def build_model(name: str, num_classes: int, shortcut: Literal["A", "B"] | None = None) -> nn.Module:
    """Instantiate a registered model.

    Args:
        name: One of ``MODEL_NAMES``.
        num_classes: Number of output classes (>= 2).
        shortcut: ResNet shortcut type on a width/stride change, "A" (default) or "B"; must be unset for
            MobileNet-V2.
    """
    if name not in _REGISTRY:
        raise ValueError(f"model name {name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name.startswith("resnet"):
        return _REGISTRY[name](num_classes, shortcut or "A")
    return _REGISTRY[name](num_classes, shortcut)
