"""timm and torchvision classifiers by name, behind the registry models' interface.

``timm:<name>`` and ``torchvision:<name>`` build that library's model with the run's number of classes and a random
initialisation (``pretrained=False`` / ``weights=None``: nothing is downloaded). :class:`ExternalModel` wraps it so
it has what the task and the compression methods use: ``forward_features`` (the classifier's input, ``[N, D]``),
``forward_head`` and a ``classifier`` (``nn.Linear``). Its state-dict keys are the library model's own with ``net.``
in front, except the classifier's, which are under ``classifier.``; :func:`load_backbone_weights` maps a state dict
saved from the bare library model (e.g. ImageNet weights fetched elsewhere) onto them.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from imbcompress.checkpoint import load_checkpoint_file, load_state_checked
from imbcompress.errors import SettingsError

SOURCES = ("timm", "torchvision")
_SHOWN_MATCHES = 5
_TORCHVISION_INPUT_SIZE = (3, 224, 224)


def split_arch(arch: str) -> tuple[str | None, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; a registry name -> ``(None, name)``."""
    source, sep, name = arch.partition(":")
    return (source, name) if sep else (None, arch)


def _timm() -> Any:
    return importlib.import_module("timm")


def _torchvision_models() -> Any:
    return importlib.import_module("torchvision.models")


def available(source: str) -> list[str]:
    """Classification model names of a library (timm: ``timm.list_models()``; torchvision: its classifiers)."""
    if source == "timm":
        return list(_timm().list_models())
    models = _torchvision_models()
    return list(models.list_models(module=models))


def close_matches(name: str, candidates: Sequence[str]) -> list[str]:
    """Up to five candidates that look like ``name`` (difflib)."""
    return difflib.get_close_matches(name, list(candidates), n=_SHOWN_MATCHES, cutoff=0.6)


def check_external(source: str, name: str, setting: str = "model.arch") -> None:
    """Raise ``ValueError`` unless ``source`` is a known library and ``name`` one of its classifiers."""
    if source not in SOURCES:
        raise ValueError(
            f"{setting}='{source}:{name}': unknown model library {source!r}; allowed prefixes: "
            f"{', '.join(s + ':' for s in SOURCES)} (or a registry name without prefix)"
        )
    exists = _timm().is_model(name) if source == "timm" else name in available(source)
    if not exists:
        matches = close_matches(name, available(source))
        hint = f"close matches: {', '.join(f'{source}:{m}' for m in matches)}" if matches else "no close match"
        raise ValueError(f"{setting}='{source}:{name}' is unknown: {source} has no model {name!r}; {hint}")


def _create(source: str, name: str, num_classes: int) -> nn.Module:
    if source == "timm":
        return _timm().create_model(name, pretrained=False, num_classes=num_classes)
    return _torchvision_models().get_model(name, weights=None, num_classes=num_classes)


def _classifier_path(net: nn.Module, source: str, num_classes: int) -> str:
    """Where the classifier is: timm says so (``get_classifier()``); in torchvision it is the last ``nn.Linear``
    with one output per class."""
    if source == "timm":
        target = net.get_classifier()  # type: ignore[operator]
        found = [name for name, module in net.named_modules() if module is target]
    else:
        found = [
            name
            for name, module in net.named_modules()
            if isinstance(module, nn.Linear) and module.out_features == num_classes
        ][-1:]
    if not found or not isinstance(net.get_submodule(found[0]), nn.Linear):
        kind = type(net.get_submodule(found[0])).__name__ if found else "none found"
        raise ValueError(
            f"{type(net).__name__}: imbcompress needs a classifier that is one nn.Linear (got {kind}); "
            "choose another architecture"
        )
    return found[0]


class ExternalModel(nn.Module):
    """A timm or torchvision classifier with ``forward_features`` / ``forward_head`` / ``classifier``.

    The library model's classifier is taken out of it (an ``nn.Identity`` takes its place), so the wrapped model
    returns the classifier's input: the pooled features.

    Args:
        net: The library model.
        classifier_path: Module name of its ``nn.Linear`` classifier inside ``net``.
        default_input_size: The input size the model is made for (C, H, W); used only when a 32x32 example image
            does not run (see ``imbcompress.models.trace``).
    """

    def __init__(self, net: nn.Module, classifier_path: str, default_input_size: Sequence[int]) -> None:
        super().__init__()
        classifier = net.get_submodule(classifier_path)
        net.set_submodule(classifier_path, nn.Identity())
        self.net = net
        self.classifier = classifier
        self.classifier_path = classifier_path
        self.default_input_size = tuple(default_input_size)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def own_key(self, key: str) -> str:
        """The state-dict key of this wrapper for a key of the bare library model."""
        prefix = self.classifier_path + "."
        return "classifier." + key[len(prefix) :] if key.startswith(prefix) else "net." + key


def build_external(source: str, name: str, num_classes: int) -> ExternalModel:
    """The library's model ``name`` with ``num_classes`` outputs and random weights, wrapped."""
    check_external(source, name)
    net = _create(source, name, num_classes)
    config = getattr(net, "pretrained_cfg", None) or {}
    size = config.get("input_size", _TORCHVISION_INPUT_SIZE)
    return ExternalModel(net, _classifier_path(net, source, num_classes), size)


def _bare_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {key.removeprefix("module."): value for key, value in checkpoint.items() if isinstance(value, Tensor)}
    if not state:
        raise SettingsError("holds no tensors")
    return state


def load_backbone_weights(model: nn.Module, path: str, arch: str, setting: str = "model.weights") -> list[str]:
    """Load a state dict of the bare architecture into ``model``; a classifier of another class count is skipped.

    Args:
        model: A registry model or an :class:`ExternalModel`.
        path: A ``torch.save``'d state dict (optionally under ``state_dict`` / ``model``), read with weights only.
        arch: The architecture name, for messages.
        setting: The option that named ``path``.

    Returns:
        The keys kept from the model's own initialisation (the classifier's, when the file's has another shape).

    Raises:
        SettingsError: The file is unreadable or holds weights of another architecture.
    """
    try:
        state = _bare_state(load_checkpoint_file(path, setting))
    except SettingsError as err:
        if str(err).startswith(setting):
            raise
        raise SettingsError(f"{setting}={path!r} {err}; give a state_dict file of {arch}") from err
    if isinstance(model, ExternalModel) and not any(key.startswith("net.") for key in state):
        state = {model.own_key(key): value for key, value in state.items()}
    own = model.state_dict()
    kept: list[str] = [
        key
        for key in ("classifier.weight", "classifier.bias")
        if key in state and key in own and state[key].shape != own[key].shape
    ]
    state.update({key: own[key] for key in kept})
    load_state_checked(model, state, path, setting, arch)
    return kept
