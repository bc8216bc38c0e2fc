"""The compression-method contract: one typed way to the task, one rule for an applied record."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import LightningModule
from tiny import quiet_trainer

from imbcompress.callbacks import ClimbQ, FilterPruning, KnowledgeDistillation, QuantizationAwareTraining
from imbcompress.callbacks.base import CompressionCallback, StructuralCompression, describe_record, task_of
from imbcompress.compress.dorefa import dorefa_record
from imbcompress.task import TASK_ATTRIBUTES, TASK_METHODS, CompressibleTask, ImbalanceClassifier

# (callback as first applied, the same settings again, other settings, the setting named in the error)
CASES: dict[str, tuple[Any, Any, Any, str]] = {
    "pruning": (FilterPruning(preset="mild"), FilterPruning(preset="mild"), FilterPruning(preset="severe"), "preset"),
    "qat": (
        QuantizationAwareTraining(4, 8),
        QuantizationAwareTraining(4, 8),
        QuantizationAwareTraining(4, 8, exclude=["stem", "classifier"]),
        "exclude",
    ),
    "climbq": (ClimbQ(bits=2), ClimbQ(bits=2), ClimbQ(bits=2, exclude=["stem.conv"]), "exclude"),
}


def test_every_method_uses_the_base() -> None:
    for cls in (FilterPruning, QuantizationAwareTraining, ClimbQ):
        assert issubclass(cls, StructuralCompression)
    assert issubclass(KnowledgeDistillation, CompressionCallback)


def test_the_member_lists_are_the_protocol() -> None:
    methods = {
        name
        for name, value in vars(CompressibleTask).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    assert set(TASK_ATTRIBUTES) == set(CompressibleTask.__annotations__)
    assert set(TASK_METHODS) == methods


def test_the_task_is_the_task_although_its_model_is_a_submodule() -> None:
    # Found on the GPU machine's Python 3.12: its runtime Protocol check looks members up with
    # inspect.getattr_static, which cannot see a submodule, so every callback refused ImbalanceClassifier.
    task = ImbalanceClassifier(num_classes=10, channels_last=False)
    with pytest.raises(AttributeError):
        inspect.getattr_static(task, "model")
    assert task_of(task, "FilterPruning") is task


def test_a_module_that_is_not_the_task_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="QuantizationAwareTraining needs the imbcompress task"):
        task_of(LightningModule(), "QuantizationAwareTraining")


@pytest.mark.parametrize("name", CASES)
def test_same_settings_reuse_the_record_other_settings_name_both_values(name: str, tmp_path: Path) -> None:
    first, same, other, setting = CASES[name]
    trainer = quiet_trainer(tmp_path)
    task = ImbalanceClassifier(num_classes=10, channels_last=False)
    first.setup(trainer, task, "test")
    same.setup(trainer, task, "test")
    assert len(task.transforms) == 1 and same.record == task.transforms[0]
    message = rf"{type(other).__name__}\.{setting}: .* with {setting}=.* configured with {setting}="
    with pytest.raises(ValueError, match=message):
        other.setup(trainer, task, "test")
    assert len(task.transforms) == 1


def test_a_record_written_before_records_carried_settings_is_reused() -> None:
    task = ImbalanceClassifier(num_classes=10, channels_last=False)
    task.apply_transform(dorefa_record(task.model, 3, 3, None))  # an older checkpoint's record: no "settings"
    qat = QuantizationAwareTraining(3, 3)
    qat.setup(None, task, "test")  # type: ignore[arg-type]
    assert len(task.transforms) == 1 and qat.record is task.transforms[0]
    with pytest.raises(ValueError, match="weight_bits=3, but this callback is configured with weight_bits=4"):
        QuantizationAwareTraining(4, 3).setup(None, task, "test")  # type: ignore[arg-type]
    described = describe_record(task.transforms[0], task.model)
    assert described["method"] == "dorefa" and described["weight_bits"] == 3 and described["layers"]
