"""FilterPruning's ``engine`` option with a Trainer: auto picks Torch-Pruning for a timm model; bad engines fail
before training."""

from __future__ import annotations

import pytest
from tiny import quiet_trainer, random_loader

from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.task import ImbalanceClassifier

ARCH = "timm:mobilenetv3_small_050"


def _task(arch: str = ARCH) -> ImbalanceClassifier:
    return ImbalanceClassifier(arch=arch, num_classes=3, channels_last=False, lr=0.01)


def test_auto_prunes_a_timm_model_with_torch_pruning(tmp_path):
    task = _task()
    callback = FilterPruning(preset="severe")
    quiet_trainer(tmp_path, callbacks=[callback], limit_train_batches=1).fit(task, train_dataloaders=random_loader(3))
    (record,) = task.transforms
    assert record["engine"] == "torch_pruning" and record["input_size"] == [3, 32, 32]  # no data module: 32x32
    assert record["settings"]["engine"] == "auto"
    entry = callback.compression_record()
    assert entry["engine_used"] == "torch_pruning" and set(record["kept_filters"].values()) == {1}
    assert entry["nnz_after"] < 0.1 * entry["nnz_before"]


def test_builtin_engine_refuses_a_library_model_before_training(tmp_path):
    task = _task()
    with pytest.raises(ValueError, match="engine='builtin' prunes only the registry models"):
        quiet_trainer(tmp_path, callbacks=[FilterPruning(preset="severe", engine="builtin")]).fit(
            task, train_dataloaders=random_loader(3)
        )
    assert task.transforms == []


def test_unknown_engine_fails_in_init():
    with pytest.raises(ValueError, match="FilterPruning.engine='tp' is unknown; allowed: auto, builtin, torch_pruning"):
        FilterPruning(preset="severe", engine="tp")  # type: ignore[arg-type]
