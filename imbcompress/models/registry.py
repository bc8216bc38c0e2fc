"""Build a model by name: the registry's CIFAR models, or ``timm:<name>`` / ``torchvision:<name>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

from imbcompress.models.external import build_external, check_external, close_matches, load_backbone_weights, split_arch
from imbcompress.models.mobilenetv2 import MobileNetV2
from imbcompress.models.resnet_cifar import CifarResNet

ModelName = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "mobilenetv2"]


class ArchName(str):
    """An architecture name, checked when a configuration is parsed (see :func:`check_arch`).

    A registry name (``resnet20``, ``mobilenetv2``, ...), ``timm:<name>`` or ``torchvision:<name>``. Values stay
    plain ``str`` (the parser's check returns one), so checkpoints that store them load with ``weights_only``.
    """


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


def check_arch(name: str) -> str:
    """``name`` as a plain ``str`` if it names a model; else a ``ValueError`` listing close matches.

    Registered with the configuration parser for :class:`ArchName`, so a wrong name fails when the configuration
    is parsed (``fit``, ``study run``'s check), before anything is built.
    """
    name = str(name)
    source, bare = split_arch(name)
    if source is not None:
        check_external(source, bare)
    elif name not in _REGISTRY:
        matches = close_matches(name, MODEL_NAMES)
        hint = f"close matches: {', '.join(matches)}; " if matches else ""
        raise ValueError(
            f"model.arch={name!r} is unknown; {hint}allowed: {', '.join(MODEL_NAMES)}, or timm:<name> / "
            "torchvision:<name> for a timm or torchvision model"
        )
    return name


def _register_with_parser() -> None:
    try:
        from jsonargparse.typing import register_type
    except ImportError:  # the models work without the command line's parser
        return
    register_type(ArchName, str, check_arch)


_register_with_parser()


def build_model(
    name: str, num_classes: int, shortcut: Literal["A", "B"] | None = None, weights: str | None = None
) -> nn.Module:
    """Instantiate a model.

    Args:
        name: One of ``MODEL_NAMES``, ``timm:<name>`` or ``torchvision:<name>`` (random initialisation; see
            ``imbcompress.models.external``).
        num_classes: Number of output classes (>= 2).
        shortcut: ResNet shortcut type on a width/stride change, "A" (default) or "B"; must be unset for the other
            models.
        weights: A state-dict file of the bare architecture to load (the classifier is left random when its class
            count differs).
    """
    check_arch(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    source, bare = split_arch(name)
    if source is not None:
        if shortcut is not None:
            raise ValueError(f"model {name!r} takes no shortcut option, got shortcut={shortcut!r} (leave it unset)")
        model: nn.Module = build_external(source, bare, num_classes)
    elif name.startswith("resnet"):
        model = _REGISTRY[name](num_classes, shortcut or "A")
    else:
        model = _REGISTRY[name](num_classes, shortcut)
    if weights is not None:
        load_backbone_weights(model, weights, name)
    return model
