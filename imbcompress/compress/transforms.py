"""Registry of structural transforms: how a compressed model's structure is rebuilt from plain records.

A record is JSON-able data with ``record["kind"]`` naming a registered function ``fn(model, record)`` that
changes ``model`` in place. The task logs every applied record and stores the list in its checkpoints, so a
checkpoint of a pruned or quantized model rebuilds the same shapes and module types before its weights load
(see docs/architecture.md, "Structural transforms").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

TransformFn = Callable[[nn.Module, dict[str, Any]], None]
TRANSFORMS: dict[str, TransformFn] = {}

# Modules that register transforms when imported; imported lazily so replaying a checkpoint never depends on
# which callbacks happen to be in the current config.
_PROVIDERS = ("imbcompress.compress.pruning", "imbcompress.compress.dorefa", "imbcompress.compress.climbq")


def register_transform(kind: str) -> Callable[[TransformFn], TransformFn]:
    """Decorator: register ``fn(model, record)`` under ``kind``."""

    def decorator(fn: TransformFn) -> TransformFn:
        if kind in TRANSFORMS and TRANSFORMS[kind] is not fn:
            raise ValueError(f"transform kind {kind!r} is registered twice")
        TRANSFORMS[kind] = fn
        return fn

    return decorator


def _load_providers() -> None:
    for name in _PROVIDERS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a provider that exists but fails to import is a real error
                raise


def apply_transform(model: nn.Module, record: dict[str, Any]) -> None:
    """Apply one structural transform record to ``model`` in place."""
    kind = record.get("kind")
    if kind not in TRANSFORMS:
        _load_providers()
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown structural transform kind {kind!r}; registered: {sorted(TRANSFORMS)}")
    TRANSFORMS[kind](model, record)


def check_not_quantized(module: nn.Module, name: str, method: str) -> None:
    """Raise if ``module`` is already quantized by another method (two quantizers on one layer)."""
    owner = getattr(module, "quantized_by", None)
    if owner is not None:
        raise ValueError(
            f"layer {name!r} is already quantized by {owner!r}; {method!r} cannot quantize it too. "
            f"Use one quantization method per layer (exclude the layer from one of them by module name)."
        )
