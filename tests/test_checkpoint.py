"""Every checkpoint path loads tensors only and fails with one message naming the file, the setting and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_helpers import CONFIGS, QUIET, fake_data_args
from fakedata import make_fake_cifar
from tiny import quiet_trainer, random_loader

from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.checkpoint import load_checkpoint_file
from imbcompress.cli import ImbCompressCLI, run_cli
from imbcompress.errors import SettingsError
from imbcompress.task import ImbalanceClassifier


class _WritesMarker:
    """Unpickling this object creates a file: the stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint that creates ``marker`` when loaded without ``weights_only`` (proven here, then undone)."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": "resnet20"}, "x": _WritesMarker(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()  # the file really runs code when loaded unsafely
    marker.unlink()
    return path, marker


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3-class resnet20 task checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    trainer = quiet_trainer(root, max_steps=1)
    trainer.fit(ImbalanceClassifier(arch="resnet20", num_classes=3), train_dataloaders=random_loader(3))
    trainer.save_checkpoint(root / "model.ckpt")
    return root / "model.ckpt"


def test_crafted_checkpoint_is_refused_as_init_from_and_teacher(crafted: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = crafted
    with pytest.raises(SettingsError, match=r"model.init_from='.*crafted.ckpt' refused: loading it would run code"):
        ImbalanceClassifier(num_classes=3, init_from=str(path))
    kd = KnowledgeDistillation(str(path))
    trainer = quiet_trainer(tmp_path, callbacks=[kd], max_steps=1)
    with pytest.raises(SettingsError, match=r"KnowledgeDistillation.teacher_checkpoint='.*crafted.ckpt' refused"):
        trainer.fit(ImbalanceClassifier(num_classes=3), train_dataloaders=random_loader(3))
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_as_ckpt_path_before_any_work(crafted: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = crafted
    root = make_fake_cifar(tmp_path / "data", train_per_class=4, test_per_class=2)
    args = [
        "test",
        f"--config={CONFIGS / 'trainer/cpu.yaml'}",
        f"--config={CONFIGS / 'model/resnet20.yaml'}",
        "--data=imbcompress.data.ImbalancedDataModule",
        *fake_data_args(root),
        *QUIET,
        f"--run_dir={tmp_path / 'run'}",
        f"--ckpt_path={path}",
    ]
    with pytest.raises(SettingsError, match=r"--ckpt_path='.*crafted.ckpt' refused: loading it would run code"):
        run_cli(args)
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_ckpt_path_loads_with_weights_only_in_lightning(trained: Path, tmp_path: Path) -> None:
    root = make_fake_cifar(tmp_path / "data", train_per_class=4, test_per_class=2)
    args = ["test", f"--config={CONFIGS / 'trainer/cpu.yaml'}", "--model=imbcompress.task.ImbalanceClassifier"]
    args += ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), f"--ckpt_path={trained}"]
    seen: list[object] = []

    class Spy(ImbCompressCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            seen.append(self.config[self.subcommand].get("weights_only"))
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        Spy(ImbalanceClassifier, subclass_mode_model=True, subclass_mode_data=True, args=args)
    assert seen == [True]


def test_truncated_and_random_checkpoints_name_file_setting_and_cause(trained: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(SettingsError, match=r"model.init_from='.*truncated.ckpt' is not a complete checkpoint"):
        ImbalanceClassifier(num_classes=3, init_from=str(truncated))
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(SettingsError, match=r"teacher_checkpoint='.*noise.ckpt' is not a complete checkpoint") as err:
        KnowledgeDistillation(str(noise)).setup(quiet_trainer(tmp_path), ImbalanceClassifier(num_classes=3), "fit")
    assert "\n" not in str(err.value)


def test_a_plain_state_dict_is_not_a_teacher(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(ImbalanceClassifier(num_classes=3).model.state_dict(), path)
    with pytest.raises(SettingsError, match="is not a checkpoint of a trained imbcompress model"):
        KnowledgeDistillation(str(path)).setup(quiet_trainer(tmp_path), ImbalanceClassifier(num_classes=3), "fit")


def test_init_from_another_architecture_is_one_clear_message(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"model.init_from='.*model.ckpt' is a resnet20 checkpoint, but this model"):
        ImbalanceClassifier(arch="resnet56", num_classes=3, init_from=str(trained))
    bare = tmp_path / "resnet56.pt"  # a bare state dict carries no architecture name: the keys tell
    torch.save(ImbalanceClassifier(arch="resnet56", num_classes=3).model.state_dict(), bare)
    with pytest.raises(SettingsError) as err:
        ImbalanceClassifier(arch="resnet20", num_classes=3, init_from=str(bare))
    message = str(err.value)
    assert "do not match architecture resnet20" in message and "unexpected (first: layer1.3." in message
    assert message.count("layer") < 10  # a summary, not the wall of keys


def test_a_good_checkpoint_still_loads(trained: Path) -> None:
    assert "state_dict" in load_checkpoint_file(trained, "x")
    task = ImbalanceClassifier(num_classes=3, init_from=str(trained))
    assert task.hparams["arch"] == "resnet20"
