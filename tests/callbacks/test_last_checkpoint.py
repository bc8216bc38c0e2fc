"""last.ckpt is written on the cadence the trainer configs promise: every N steps and at every epoch end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import quiet_trainer, random_loader

from imbcompress.callbacks import LastCheckpoint
from imbcompress.task import ImbalanceClassifier

CONFIGS = Path(__file__).parents[2] / "configs"


class SaveSpy(Callback):
    """Records the global step of every checkpoint written."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.steps.append(trainer.global_step)


def _checkpoint_callbacks(config: Path, every_n_train_steps: int) -> list[Callback]:
    """The checkpoint callbacks of a committed trainer fragment, with its step interval shortened."""
    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    callbacks = []
    for item in yaml.safe_load(config.read_text())["trainer"]["callbacks"]:
        if "Checkpoint" not in item["class_path"]:
            continue
        if item.get("init_args", {}).get("every_n_train_steps"):
            item["init_args"]["every_n_train_steps"] = every_n_train_steps
        callbacks.append(parser.instantiate(parser.parse_object({"callback": item})).callback)
    return callbacks


@pytest.mark.parametrize("fragment", ["cpu", "ddp_cpu", "gpu"])
def test_trainer_configs_write_last_at_every_epoch_end_and_every_n_steps(fragment: str, tmp_path: Path) -> None:
    spy = SaveSpy()
    callbacks = _checkpoint_callbacks(CONFIGS / f"trainer/{fragment}.yaml", every_n_train_steps=3)
    trainer = quiet_trainer(
        tmp_path, callbacks=[*callbacks, spy], enable_checkpointing=True, max_epochs=3, limit_train_batches=4
    )
    trainer.fit(ImbalanceClassifier(num_classes=3, channels_last=False), train_dataloaders=random_loader(3, n=32))
    # 4 steps per epoch: steps 3, 6, 9, 12 by the interval; epoch ends at 4, 8 and 12 (12 is written once)
    assert spy.steps == [3, 4, 6, 8, 9, 12]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_plain_model_checkpoint_does_not_refresh_last_at_epoch_end(tmp_path: Path) -> None:
    """Why LastCheckpoint exists: Lightning's own callback with save_top_k=0 skips epoch ends."""
    spy = SaveSpy()
    plain = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = quiet_trainer(tmp_path, callbacks=[plain, spy], enable_checkpointing=True, max_epochs=2)
    trainer.fit(ImbalanceClassifier(num_classes=3, channels_last=False), train_dataloaders=random_loader(3))
    assert spy.steps == [4]  # 2 epochs of 2 steps: only at the end of fit; LastCheckpoint writes at 2 and 4


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match="LastCheckpoint.every_n_train_steps must be an integer >= 1, got 0"):
        LastCheckpoint(every_n_train_steps=0)
