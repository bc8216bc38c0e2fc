"""ClimbQ callback: labels only in training, checkpoint round trips, HomoVar logging, composition, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import Interrupt, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from imbcompress.callbacks.climbq import ClimbQ
from imbcompress.callbacks.filter_pruning import FilterPruning
from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining
from imbcompress.compress.climbq import ClimbQBatchNorm2d, ClimbQConv2d
from imbcompress.compress.homovar import HomoVarLoss
from imbcompress.compress.size import model_size
from imbcompress.data.datamodule import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier

TRAIN_COUNTS = [12, 8, 6, 4, 4, 3, 3, 2, 2, 2]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), train_per_class=TRAIN_COUNTS, test_per_class=2, size=16)


def _datamodule(root: Path) -> ImbalancedDataModule:
    return ImbalancedDataModule(root=str(root), batch_size=16, eval_batch_size=10)


def _task(**kwargs) -> ImbalanceClassifier:
    torch.manual_seed(0)
    return ImbalanceClassifier(arch="resnet20", num_classes=10, lr=0.05, **kwargs)


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, **({"limit_val_batches": 0} | kwargs))


def _test_metrics(trainer: Trainer, task: ImbalanceClassifier | None, root: Path, ckpt_path: Path | None = None):
    ckpt = None if ckpt_path is None else str(ckpt_path)  # metrics.json needs a JSON-able path
    results = trainer.test(task, datamodule=_datamodule(root), ckpt_path=ckpt, verbose=False)[0]
    return {key: results[key] for key in ("test/accuracy", "test/macro_f1", "test/loss")}


class LabelSpy(Callback):
    """Records, for every forward pass of one ClimbQ BatchNorm, whether labels were visible to its quantizer."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        bn = pl_module.model.layer1[0].bn1
        assert isinstance(bn, ClimbQBatchNorm2d)
        bn.register_forward_hook(lambda m, _i, _o: self.seen.append((m.training, m.act_quantizer.labels is not None)))


@pytest.mark.parametrize("kwargs", [dict(bits=1), dict(bits=9), dict(mode="fancy"), dict(alpha=0.0)])
def test_bad_settings_fail_in_init(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"ClimbQ.{next(iter(kwargs))}"):
        ClimbQ(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(beta=1.0), dict(exclude=[""]), dict(homovar_mode="levene")])
def test_more_bad_settings_fail_in_init(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"ClimbQ.{next(iter(kwargs))}"):
        ClimbQ(**kwargs)


def test_bad_homovar_mode_message_names_value_and_allowed_values() -> None:
    allowed = r"\('official', 'paper', 'class_balanced'\)"
    with pytest.raises(ValueError, match=rf"ClimbQ.homovar_mode must be one of {allowed}, got 'levene'"):
        ClimbQ(homovar=True, homovar_mode="levene")  # type: ignore[arg-type]


def test_no_class_counts_is_a_clear_error(tmp_path: Path) -> None:
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    with pytest.raises(ValueError, match="train_class_counts"):
        _trainer(tmp_path, callbacks=[ClimbQ()]).fit(_task(), train_dataloaders=loader)


def test_climbq_plus_fit_uses_labels_only_in_training_and_reloads_give_equal_metrics(
    tmp_path: Path, cifar_root: Path
) -> None:
    task, spy = _task(), LabelSpy()
    climbq = ClimbQ(bits=2, homovar=True)
    trainer = _trainer(tmp_path, callbacks=[climbq, spy])
    trainer.fit(task, datamodule=_datamodule(cifar_root))
    assert spy.seen == [(True, True), (True, True)]  # two training steps, each with its batch labels
    assert isinstance(task.criterion, HomoVarLoss)
    assert "train/homovar_weight/airplane" in trainer.callback_metrics
    assert "train/homovar_classes_inside" in trainer.callback_metrics
    fit_metrics = _test_metrics(trainer, task, cifar_root)
    assert spy.seen[2:] and all(not training and not labels for training, labels in spy.seen[2:])
    assert len(task.transforms) == 1
    path = tmp_path / "climbq.ckpt"
    trainer.save_checkpoint(path)

    with_callback = _trainer(tmp_path, callbacks=[ClimbQ(bits=2, homovar=True)])
    assert _test_metrics(with_callback, _task(), cifar_root, ckpt_path=path) == fit_metrics
    assert _test_metrics(_trainer(tmp_path), _task(), cifar_root, ckpt_path=path) == fit_metrics
    reloaded = ImbalanceClassifier.load_from_checkpoint(path)
    assert isinstance(reloaded.model.stem.conv, ClimbQConv2d) and reloaded.model.stem.conv.weight_bits == 2
    assert _test_metrics(_trainer(tmp_path), reloaded, cifar_root) == fit_metrics

    record = climbq.compression_record()
    assert record["method"] == "climbq" and record["weight_bits"] == record["activation_bits"] == 2
    assert record["homovar"] is True and record["mode"] == record["homovar_mode"] == "official"
    assert len(record["layers"]) == 19  # option A: no shortcut convs
    dense = model_size(_task().model)["weight_storage_bits"]
    quantized_convs = sum(m.weight.numel() for m in task.model.modules() if isinstance(m, ClimbQConv2d))
    assert model_size(task.model)["weight_storage_bits"] == dense - 30 * quantized_convs


def test_paper_mode_trains_with_class_counts_from_the_datamodule(tmp_path: Path, cifar_root: Path) -> None:
    task = _task(channels_last=False)
    climbq = ClimbQ(bits=3, mode="paper", exclude=["stem.conv"])
    with pytest.warns(UserWarning, match="ClimbQ mode='paper' .* the forward pass carries its label"):
        _trainer(tmp_path, callbacks=[climbq], limit_train_batches=1).fit(task, datamodule=_datamodule(cifar_root))
    assert climbq.class_counts == TRAIN_COUNTS
    assert type(task.model.stem.conv) is torch.nn.Conv2d and isinstance(task.model.layer1[0].conv1, ClimbQConv2d)


def test_climbq_and_dorefa_on_the_same_layers_is_a_configuration_error(tmp_path: Path, cifar_root: Path) -> None:
    trainer = _trainer(tmp_path, callbacks=[QuantizationAwareTraining(), ClimbQ()])
    with pytest.raises(ValueError, match="already quantized by 'dorefa'"):
        trainer.fit(_task(), datamodule=_datamodule(cifar_root))


def test_composes_with_pruning_and_distillation(tmp_path: Path, cifar_root: Path) -> None:
    teacher_trainer = _trainer(tmp_path, limit_train_batches=1)
    teacher_trainer.fit(_task(), datamodule=_datamodule(cifar_root))
    teacher_path = tmp_path / "teacher.ckpt"
    teacher_trainer.save_checkpoint(teacher_path)

    task = _task()
    callbacks = [FilterPruning(preset="moderate"), ClimbQ(bits=2), KnowledgeDistillation(str(teacher_path))]
    trainer = _trainer(tmp_path, callbacks=callbacks)
    trainer.fit(task, datamodule=_datamodule(cifar_root))
    assert [record["kind"] for record in task.transforms] == ["filter_pruning", "climbq"]
    conv = task.model.layer1[0].conv1
    assert isinstance(conv, ClimbQConv2d) and conv.out_channels < 16
    assert "train/loss_distill" in trainer.callback_metrics
    fit_metrics = _test_metrics(trainer, task, cifar_root)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    assert _test_metrics(_trainer(tmp_path), ImbalanceClassifier.load_from_checkpoint(path), cifar_root) == fit_metrics


@pytest.mark.parametrize("homovar_mode", ["paper", "class_balanced"])
def test_homovar_mode_picks_the_loss_independently_of_the_quantizer_mode(
    tmp_path: Path, cifar_root: Path, homovar_mode: str
) -> None:
    climbq = ClimbQ(bits=2, homovar=True, homovar_mode=homovar_mode)  # type: ignore[arg-type]
    task = _task()
    _trainer(tmp_path, callbacks=[climbq], limit_train_batches=1).fit(task, datamodule=_datamodule(cifar_root))
    assert isinstance(task.criterion, HomoVarLoss) and task.criterion.mode == homovar_mode
    assert climbq.compression_record()["mode"] == "official"
    assert climbq.compression_record()["homovar_mode"] == homovar_mode


def _resumable_fit(
    root: Path, workdir: Path, homovar_mode: str, interrupt_at: int | None = None, ckpt: str | None = None
) -> ImbalanceClassifier:
    task = _task(channels_last=False, scheduler="cosine")
    callbacks: list[Callback] = [
        ClimbQ(bits=2, homovar=True, homovar_mode=homovar_mode),  # type: ignore[arg-type]
        ModelCheckpoint(dirpath=workdir / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=2),
    ]
    if interrupt_at is not None:
        callbacks.append(Interrupt(interrupt_at))
    trainer = _trainer(
        workdir, callbacks=callbacks, limit_train_batches=None, enable_checkpointing=True,
        precision="32-true", deterministic=True,
    )  # fmt: skip
    trainer.fit(task, datamodule=_datamodule(root), ckpt_path=ckpt)
    return task


def test_climbq_plus_resumes_mid_epoch_to_the_uninterrupted_result(tmp_path: Path, cifar_root: Path) -> None:
    # 46 images, batch 16: 3 steps in the epoch; the crash after step 3 resumes from the step-2 checkpoint.
    reference = _resumable_fit(cifar_root, tmp_path / "reference", "paper")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _resumable_fit(cifar_root, tmp_path / "interrupted", "paper", interrupt_at=3)
    last = tmp_path / "interrupted" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # mid-epoch
    resumed = _resumable_fit(cifar_root, tmp_path / "interrupted", "paper", ckpt=str(last))
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
