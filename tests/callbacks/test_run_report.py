"""RunReport: the one callback that writes a run's outputs (metrics.json, predictions, figures)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tiny import quiet_trainer, random_loader

from imbcompress.callbacks import run_report
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier


class Remedy(Callback):
    """A stand-in for a loss-replacing remedy: the documented hook for a metrics.json section."""

    metrics_section = "remedies"

    def metrics_record(self) -> dict[str, Any]:
        return {"remedy": "class_balanced", "beta": 0.999}


def test_metrics_json_comes_from_the_run_report_only(tmp_path: Path) -> None:
    task = ImbalanceClassifier(num_classes=3, channels_last=False)
    bare = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path / "bare")
    bare.test(task, dataloaders=random_loader(3), verbose=False)
    assert task.last_test_results is not None and not (tmp_path / "bare/metrics.json").exists()

    trainer = quiet_trainer(tmp_path / "run", callbacks=[Remedy()])
    trainer.fit(task, train_dataloaders=random_loader(3))
    trainer.test(task, dataloaders=random_loader(3), verbose=False)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["remedies"] == [{"remedy": "class_balanced", "beta": 0.999}] and metrics["compression"] == []
    assert metrics["test"] == task.last_test_results


def test_class_distribution_figure_goes_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = make_fake_cifar(tmp_path / "data", train_per_class=10, test_per_class=2, size=8)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    datamodule = ImbalancedDataModule("cifar10", str(root), profile="exponential", imbalance_ratio=10)
    trainer = quiet_trainer(tmp_path, logger=logger, limit_test_batches=1)
    trainer.test(ImbalanceClassifier(num_classes=10, channels_last=False), datamodule=datamodule, verbose=False)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "data/class_distribution" in events.Tags()["images"]


@pytest.mark.parametrize(
    ("precision", "native", "warns"),
    [("bf16-mixed", False, True), ("bf16-mixed", True, False), ("bf16-mixed", None, False), ("32-true", False, False)],
)
def test_bf16_on_a_cpu_without_native_bf16_warns(
    precision: str, native: bool | None, warns: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_report, "cpu_has_native_bf16", lambda: native)
    trainer = Trainer(accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_report.warn_if_bf16_is_emulated(trainer)
    messages = [str(w.message) for w in caught if "native bf16" in str(w.message)]
    assert len(messages) == int(warns)
    if warns:
        assert "trainer.precision=bf16-mixed" in messages[0] and "32-true" in messages[0]
