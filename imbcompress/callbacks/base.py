"""The contract of a compression method's callback (docs/architecture.md, "Adding a method").

Every compression callback derives from :class:`CompressionCallback`: it reaches the task through one typed
function (:func:`task_of`), states its settings as plain data and describes itself for ``metrics.json``
(``compression_record()``). A method that changes the model's structure derives from
:class:`StructuralCompression`, which owns the one rule for a record that is already applied (replayed from
``init_from`` or a checkpoint): same settings, reuse it; other settings, a ``ValueError`` naming the callback, the
setting and both values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, cast

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from imbcompress.task import CompressibleTask, is_compressible_task

DESCRIBERS: dict[str, Callable[[dict[str, Any], nn.Module], dict[str, Any]]] = {}
"""``describe(record, model)`` of every structural method by record kind: how ``metrics.json`` reports a record
that a checkpoint carries, whichever callbacks the current configuration has."""


def task_of(pl_module: LightningModule, who: str) -> CompressibleTask:
    """``pl_module`` as the imbcompress task, or a ``ValueError`` naming the callback ``who`` that needs it."""
    if not is_compressible_task(pl_module):
        raise ValueError(
            f"{who} needs the imbcompress task (imbcompress.task.ImbalanceClassifier or any CompressibleTask); "
            f"got {type(pl_module).__name__}"
        )
    return cast(CompressibleTask, pl_module)


def train_class_counts(trainer: Trainer, who: str) -> list[int]:
    """``trainer.datamodule.train_class_counts``, or an error saying that ``who`` needs them."""
    datamodule = getattr(trainer, "datamodule", None)
    counts = getattr(datamodule, "train_class_counts", None)
    if not counts:
        raise ValueError(
            f"{who} needs the training-set class counts from trainer.datamodule.train_class_counts, but "
            f"{type(datamodule).__name__ if datamodule is not None else 'no data module'} provides none; "
            "use an imbcompress ImbalancedDataModule (or a data module exposing train_class_counts)"
        )
    return [int(count) for count in counts]


class CompressionCallback(Callback, ABC):
    """Base of every compression callback.

    Subclasses validate their settings in ``__init__`` by calling their ``compress/`` module's check, and set
    ``method`` (the name in ``metrics.json["compression"]``).
    """

    method: ClassVar[str]
    metrics_section: ClassVar[str] = "compression"

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The callback's arguments as plain data (what identifies an applied record of this method)."""

    @abstractmethod
    def compression_record(self) -> dict[str, Any]:
        """Plain-data summary for ``metrics.json["compression"]``, with ``"method"``."""

    def metrics_record(self) -> dict[str, Any]:
        """The run-report hook (see ``RunReport``): this callback's entry in ``metrics[metrics_section]``."""
        return self.compression_record()


class StructuralCompression(CompressionCallback):
    """A compression callback that changes the model's structure once, in ``setup()``, through a record.

    Subclasses set ``method`` to the record's ``kind`` and implement :meth:`describe`; ``legacy_setting_keys`` names
    the settings that records written before records carried ``settings`` store at their top level.
    """

    legacy_setting_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.record: dict[str, Any] | None = None
        self._model: nn.Module | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:
            DESCRIBERS[cls.method] = cls.describe

    @classmethod
    @abstractmethod
    def describe(cls, record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        """The ``metrics.json`` entry of an applied ``record`` of this method on ``model``."""

    @classmethod
    def settings_of(cls, record: dict[str, Any]) -> dict[str, Any]:
        """The settings a record was made with (only those it states)."""
        if isinstance(record.get("settings"), dict):
            return dict(record["settings"])
        return {key: record[key] for key in cls.legacy_setting_keys if key in record}

    def applied_record(self, task: CompressibleTask) -> dict[str, Any] | None:
        """The one rule: this method's record already applied to ``task``, if any, when its settings match.

        Raises:
            ValueError: The model carries this method with other settings.
        """
        for record in task.transforms:
            if record.get("kind") != self.method:
                continue
            mine = self.settings
            for key, theirs in self.settings_of(record).items():
                if key in mine and mine[key] != theirs:
                    raise ValueError(
                        f"{type(self).__name__}.{key}: the model (from model.init_from or the checkpoint) is already "
                        f"compressed by {self.method!r} with {key}={theirs!r}, but this callback is configured with "
                        f"{key}={mine[key]!r}. Use the checkpoint's settings, or start from a checkpoint without "
                        f"{self.method!r} (e.g. the uncompressed parent)."
                    )
            return record
        return None

    def apply_once(self, task: CompressibleTask, build: Callable[[], dict[str, Any]]) -> bool:
        """Reuse the applied record, or build one (``build()``, without ``settings``) and apply it.

        Returns:
            Whether a new record was applied.
        """
        record = self.applied_record(task)
        applied = record is None
        if record is None:
            record = build() | {"settings": self.settings}
            task.apply_transform(record)
        self.record = record
        self._model = task.model
        return applied

    def compression_record(self) -> dict[str, Any]:
        if self.record is None or self._model is None:
            return {"method": self.method, **self.settings}
        return self.describe(self.record, self._model)


def describe_record(record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``metrics.json`` entry of any applied structural record (its method's ``describe``)."""
    kind = str(record.get("kind"))
    if kind in DESCRIBERS:
        return DESCRIBERS[kind](record, model)
    return {"method": kind, **StructuralCompression.settings_of(record)}
