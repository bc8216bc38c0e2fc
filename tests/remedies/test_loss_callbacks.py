"""Loss-remedy callbacks in a fit: criterion installed from the data's counts, DRW timing, conflicts, bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from imbcompress.callbacks import (
    ClassBalancedLoss,
    ClimbQ,
    FocalLoss,
    KnowledgeDistillation,
    LDAMDRWLoss,
    LogitAdjustedLoss,
)
from imbcompress.data import ImbalancedDataModule
from imbcompress.remedies.losses import LDAMCriterion, LogitAdjustedCriterion, log_priors
from imbcompress.task import ImbalanceClassifier, LossContext


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), train_per_class=12, test_per_class=2)


def _datamodule(root: Path, **kwargs: object) -> ImbalancedDataModule:
    settings: dict = dict(dataset="cifar10", root=str(root), profile="exponential", imbalance_ratio=4, batch_size=16)
    return ImbalancedDataModule(**(settings | kwargs))


def _trainer(workdir: Path, callbacks: list[Callback], **kwargs: object) -> Trainer:
    checkpointing = any(isinstance(callback, ModelCheckpoint) for callback in callbacks)
    settings: dict = dict(
        enable_checkpointing=checkpointing,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        limit_test_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
    )
    return Trainer(callbacks=callbacks, **(settings | kwargs))


class _Probe(Callback):
    """Records, at each training step, whether the LDAM criterion re-weights and the loss the task computes."""

    def __init__(self) -> None:
        self.reweighting: list[bool] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        criterion = pl_module.criterion  # type: ignore[attr-defined]
        assert isinstance(criterion, LDAMCriterion)
        self.reweighting.append(criterion.reweighting)


@pytest.mark.parametrize(
    "remedy", [ClassBalancedLoss(beta=0.99, gamma=1.0), FocalLoss(gamma=2.0), LDAMDRWLoss(), LogitAdjustedLoss(0.5)]
)
def test_each_remedy_installs_its_criterion_from_the_data_counts(
    remedy: Callback, data_root: Path, tmp_path: Path
) -> None:
    task = ImbalanceClassifier(num_classes=10)
    datamodule = _datamodule(data_root)
    _trainer(tmp_path, [remedy]).fit(task, datamodule=datamodule)
    assert task.criterion is remedy.criterion  # type: ignore[attr-defined]
    if isinstance(remedy, LogitAdjustedLoss):
        assert isinstance(task.criterion, LogitAdjustedCriterion)
        torch.testing.assert_close(task.criterion.log_prior, log_priors(datamodule.train_class_counts))
    record = remedy.metrics_record()  # type: ignore[attr-defined]
    assert record["method"] == remedy.method  # type: ignore[attr-defined]


@pytest.mark.parametrize(("settings", "start"), [({"drw_epoch": 1}, 1), ({"drw_fraction": 0.5}, 1), ({}, 2)])
def test_drw_switches_at_the_first_step_of_the_named_epoch_and_not_before(
    settings: dict, start: int, data_root: Path, tmp_path: Path
) -> None:
    remedy, probe = LDAMDRWLoss(**settings), _Probe()
    _trainer(tmp_path, [remedy, probe], max_epochs=3).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root, batch_size=8)
    )
    assert probe.reweighting == [False] * start + [True] * (3 - start)  # one step per epoch
    assert remedy.metrics_record()["drw_start_epoch"] == start


def test_drw_resumes_at_the_same_step(data_root: Path, tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _trainer(tmp_path, [LDAMDRWLoss(drw_epoch=1), checkpoint], max_epochs=2, limit_train_batches=2).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root, batch_size=8)
    )
    remedy, probe = LDAMDRWLoss(drw_epoch=1), _Probe()
    _trainer(tmp_path, [remedy, probe], max_epochs=2, limit_train_batches=2).fit(
        ImbalanceClassifier(num_classes=10),
        datamodule=_datamodule(data_root, batch_size=8),
        ckpt_path=tmp_path / "ckpt/step=1.ckpt",
    )
    assert probe.reweighting == [False, True, True]  # steps 1..3 after a resume mid-epoch 0; the switch is at step 2


def test_distillation_keeps_one_minus_alpha_times_the_remedy_as_its_base(data_root: Path, tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    _trainer(teacher_dir, [ModelCheckpoint(dirpath=teacher_dir, save_last=True, save_top_k=0)]).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root)
    )
    task = ImbalanceClassifier(num_classes=10)
    distill = KnowledgeDistillation(str(teacher_dir / "last.ckpt"), alpha=0.7, temperature=2.0)
    remedy = LogitAdjustedLoss(tau=1.0)
    trainer = _trainer(tmp_path, [distill, remedy])
    trainer.fit(task, datamodule=_datamodule(data_root))
    distill.setup(trainer, task, "fit")  # fit's teardown removed the term; register it again to inspect the loss
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(6, 3, 32, 32, generator=generator), torch.arange(6)
    task.eval()
    features = task.model.forward_features(inputs)
    ctx = LossContext(inputs, targets, features, task.model.forward_head(features), "train")
    total, parts = task.compute_loss(ctx)
    assert task.criterion is remedy.criterion and remedy.criterion is not None
    torch.testing.assert_close(total, 0.3 * remedy.criterion(ctx) + distill.term(ctx))  # type: ignore[misc]
    torch.testing.assert_close(parts["base"], remedy.criterion(ctx))


@pytest.mark.parametrize(
    ("first", "second", "names"),
    [
        (LDAMDRWLoss(), LogitAdjustedLoss(), "LDAMDRWLoss .*'ldam_drw'.* and LogitAdjustedLoss .*'logit_adjusted'"),
        (ClimbQ(bits=4, homovar=True), ClassBalancedLoss(), "ClimbQ with homovar=True .* and ClassBalancedLoss"),
        (FocalLoss(), ClimbQ(bits=4, homovar=True), "FocalLoss .* and ClimbQ with homovar=True"),
    ],
)
def test_two_base_loss_remedies_are_a_configuration_error_before_any_step(
    first: Callback, second: Callback, names: str, data_root: Path, tmp_path: Path
) -> None:
    task = ImbalanceClassifier(num_classes=10)
    trainer = _trainer(tmp_path, [first, second])
    with pytest.raises(ValueError, match=names + ".*both replace the task's base loss"):
        trainer.fit(task, datamodule=_datamodule(data_root))
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClassBalancedLoss(beta=-0.1), r"ClassBalancedLoss.beta must be in \[0, 1\), got -0.1"),
        (lambda: ClassBalancedLoss(beta=1.0), r"ClassBalancedLoss.beta must be in \[0, 1\), got 1.0"),
        (lambda: ClassBalancedLoss(gamma=-1), "ClassBalancedLoss.gamma must be a number >= 0, got -1"),
        (lambda: FocalLoss(gamma=0), "FocalLoss.gamma must be a number > 0, got 0"),
        (lambda: LogitAdjustedLoss(tau=-0.5), "LogitAdjustedLoss.tau must be a number >= 0, got -0.5"),
        (lambda: LDAMDRWLoss(drw_beta=1.5), r"LDAMDRWLoss.drw_beta must be in \[0, 1\), got 1.5"),
        (lambda: LDAMDRWLoss(drw_epoch=-1), "LDAMDRWLoss.drw_epoch must be an epoch >= 0, got -1"),
        (lambda: LDAMDRWLoss(drw_fraction=1.0), r"LDAMDRWLoss.drw_fraction must be in \[0, 1\), got 1.0"),
        (lambda: LDAMDRWLoss(drw_epoch=3, drw_fraction=0.5), "at most one of LDAMDRWLoss.drw_epoch"),
        (lambda: LDAMDRWLoss(max_margin=0), "LDAMDRWLoss.max_margin must be a number > 0, got 0"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_setting(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_drw_epoch_past_the_end_fails_before_training(data_root: Path, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [LDAMDRWLoss(drw_epoch=3)], max_epochs=3)
    with pytest.raises(ValueError, match=r"LDAMDRWLoss.drw_epoch=3 is past the end .*max_epochs=3\); allowed: 0\.\.2"):
        trainer.fit(ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root))
    assert trainer.global_step == 0
    trainer = _trainer(tmp_path, [LDAMDRWLoss()], max_epochs=-1, max_steps=2)
    with pytest.raises(ValueError, match="drw_fraction needs trainer.max_epochs"):
        trainer.fit(ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root))


def test_deferred_sampler_past_the_end_fails_before_training(data_root: Path, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [], max_epochs=2)
    with pytest.raises(ValueError, match=r"sampler_switch_epoch=2 is past the end .*allowed: 1\.\.1"):
        trainer.fit(
            ImbalanceClassifier(num_classes=10),
            datamodule=_datamodule(data_root, sampler="deferred", sampler_switch_epoch=2),
        )
    assert trainer.global_step == 0


def test_testing_a_checkpoint_with_another_remedy_is_an_error(data_root: Path, tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _trainer(tmp_path, [LogitAdjustedLoss(tau=1.0), checkpoint]).fit(
        ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root)
    )
    ckpt = str(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"trained with LogitAdjustedLoss settings \{'tau': 1.0\}.*\{'tau': 0.5\}"):
        _trainer(tmp_path, [LogitAdjustedLoss(tau=0.5)]).test(
            ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root), ckpt_path=ckpt
        )
    with pytest.raises(
        ValueError, match="FocalLoss .*'focal'.* is configured, but the checkpoint was not trained with"
    ):
        _trainer(tmp_path, [FocalLoss()]).test(
            ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root), ckpt_path=ckpt
        )
