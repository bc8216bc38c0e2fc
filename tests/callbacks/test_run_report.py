"""RunReport: the one callback that writes a run's outputs (metrics.json, predictions, figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tiny import quiet_trainer, random_loader

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
