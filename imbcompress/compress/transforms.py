"""Registry of structural transforms: how a compressed model's structure is rebuilt from plain records.

A record is JSON-able data with ``record["kind"]`` naming a registered function ``fn(model, record)`` that
changes ``model`` in place. The task keeps a :class:`TransformLog` of every applied record and stores it in its
checkpoints, so a checkpoint of a pruned or quantized model rebuilds the same shapes and module types before its
weights load (see docs/architecture.md, "Structural transforms").
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from imbcompress.checkpoint import (
    check_checkpoint_arch,
    load_checkpoint_file,
    load_state_checked,
    model_state_from_checkpoint,
)

TRANSFORMS_KEY = "imbcompress_transforms"
"""The checkpoint key holding the list of applied records."""

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


WEIGHT_CHOICE_KEYS = frozenset({"kept_indices"})
"""Record keys that say which weights a transform kept, not which shapes it made (the filter indices of the
Torch-Pruning engine, ranked on the weights the record was made on). Two records that differ only there build the
same structure, which is all a checkpoint's state dict needs, so :func:`compatible` ignores them."""


def compatible(saved: dict[str, Any], applied: dict[str, Any]) -> bool:
    """Whether two records describe the same transform: same kind, equal on every key both have (except
    :data:`WEIGHT_CHOICE_KEYS`).

    Records written by older versions lack keys added since (e.g. ``settings``); they still match.
    """
    shared = (saved.keys() & applied.keys()) - WEIGHT_CHOICE_KEYS
    return saved.get("kind") == applied.get("kind") and all(saved[key] == applied[key] for key in shared)


class TransformLog(list[dict[str, Any]]):
    """The structural records applied to one model, in order; what a checkpoint stores to rebuild its structure.

    A plain list of records (so it compares equal to one), with the three things done with it: apply a record,
    replay a checkpoint's records, and initialise a model from a checkpoint file.
    """

    def apply(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Apply ``record`` to ``model`` and log a copy of it."""
        apply_transform(model, record)
        self.append(copy.deepcopy(record))

    def replay(self, model: nn.Module, saved: list[dict[str, Any]]) -> None:
        """Apply the records of ``saved`` (a checkpoint's log) that this log has not applied yet.

        The records already applied (by the current configuration's callbacks) must be the checkpoint's first ones.
        """
        applied = len(self)
        if len(saved) < applied or not all(compatible(s, a) for s, a in zip(saved, self)):
            raise ValueError(
                "the checkpoint's compression does not match this configuration: checkpoint applied "
                f"{[r.get('kind') for r in saved]}, the current model {[r.get('kind') for r in self]}. "
                "Test a checkpoint with the configuration it was trained with (the run's config.yaml)."
            )
        for record in saved[applied:]:
            self.apply(model, record)

    def saved(self) -> list[dict[str, Any]]:
        """A copy for a checkpoint (plain data only)."""
        return copy.deepcopy(list(self))

    def load_weights(
        self, model: nn.Module, path: str, num_classes: int, arch: str, setting: str = "model.init_from"
    ) -> None:
        """Initialise ``model`` from a checkpoint file, replaying its structural compression first.

        Args:
            model: The model to change and load.
            path: An imbcompress/Lightning checkpoint or a plain ``state_dict`` file.
            num_classes: The classes the model must have.
            arch: The model's architecture name (a checkpoint of another architecture is refused).
            setting: The option that named ``path`` (for error messages).
        """
        checkpoint = load_checkpoint_file(path, setting=setting)
        check_checkpoint_arch(checkpoint, arch, path, setting=setting)
        self.replay(model, checkpoint.get(TRANSFORMS_KEY, []))
        state = model_state_from_checkpoint(checkpoint)
        head = state.get("classifier.weight")
        if head is not None and head.shape[0] != num_classes:
            raise ValueError(f"{setting}={path!r} has {head.shape[0]} classes but the data module has {num_classes}")
        load_state_checked(model, state, path, setting, arch)
