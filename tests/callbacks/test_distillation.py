"""KnowledgeDistillation callback: frozen teacher outside the student, the loss, QAT + KD together, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from tiny import quiet_trainer, random_loader
from torch.utils.data import DataLoader

from imbcompress.callbacks.knowledge_distillation import KnowledgeDistillation
from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining
from imbcompress.compress.distillation import distillation_loss
from imbcompress.compress.dorefa import DoReFaConv2d
from imbcompress.task import ImbalanceClassifier

NUM_CLASSES = 3


def _loader(seed: int = 0, n: int = 16, num_classes: int = NUM_CLASSES) -> DataLoader:
    return random_loader(num_classes, n=n, seed=seed)


def _trainer(root: Path, **kwargs) -> Trainer:
    return quiet_trainer(root, **kwargs)


def _task(num_classes: int = NUM_CLASSES, **kwargs) -> ImbalanceClassifier:
    torch.manual_seed(0)
    return ImbalanceClassifier(arch="resnet20", num_classes=num_classes, lr=0.05, **kwargs)


def _fit_and_save(root: Path, name: str, num_classes: int = NUM_CLASSES, callbacks: list | None = None) -> str:
    trainer = _trainer(root, callbacks=callbacks or [], max_steps=1)
    trainer.fit(_task(num_classes, channels_last=False), train_dataloaders=_loader(num_classes=num_classes))
    path = root / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("teachers")
    return {
        "fp32": _fit_and_save(root, "fp32"),
        "qat": _fit_and_save(root, "qat", callbacks=[QuantizationAwareTraining(4, 8)]),
        "four_classes": _fit_and_save(root, "four", num_classes=4),
    }


def test_loss_is_the_spec_formula_and_the_teacher_stays_in_eval(teachers: dict[str, str]) -> None:
    task = _task(channels_last=False)
    kd = KnowledgeDistillation(teachers["fp32"], alpha=0.7, temperature=2.0)
    kd.setup(None, task, "fit")  # type: ignore[arg-type]
    assert task.loss_terms["distill"].base_weight == pytest.approx(0.3)
    task.train()  # what Lightning does at the start of every epoch
    assert kd.teacher is not None and not kd.teacher.training
    images, targets = next(iter(_loader(seed=2)))
    ctx = task._forward((images, targets), "train")
    total, parts = task.compute_loss(ctx)
    with torch.no_grad():
        expected = distillation_loss(ctx.logits, kd.teacher(images), targets, alpha=0.7, temperature=2.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"base", "distill"}


def test_fit_leaves_the_teacher_untouched_and_outside_the_student(tmp_path: Path, teachers: dict[str, str]) -> None:
    kd = KnowledgeDistillation(teachers["fp32"])
    task = _task(channels_last=False)
    keys = list(task.state_dict())
    trainer = _trainer(tmp_path, callbacks=[kd])
    trainer.fit(task, train_dataloaders=_loader())
    teacher = kd.teacher
    assert teacher is not None and not teacher.training
    assert all(param.grad is None and not param.requires_grad for param in teacher.parameters())
    saved = torch.load(teachers["fp32"], weights_only=True)["state_dict"]
    for key, value in teacher.state_dict().items():  # weights and BN running statistics unchanged
        assert torch.equal(value, saved[f"model.{key}"]), key
    assert list(task.state_dict()) == keys
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert "train/loss_distill" in trainer.callback_metrics
    assert "distill" not in task.loss_terms  # removed after fit: evaluation uses plain cross-entropy


@pytest.mark.parametrize("order", ["kd_first", "qat_first"])
def test_qat_student_with_teacher_reloads_to_the_same_test_metrics(
    tmp_path: Path, teachers: dict[str, str], order: str
) -> None:
    callbacks = [KnowledgeDistillation(teachers["fp32"], alpha=0.7), QuantizationAwareTraining(3, 3)]
    if order == "qat_first":
        callbacks.reverse()
    precision = "bf16-mixed" if order == "qat_first" else "32-true"  # the teacher runs under the same autocast
    task = _task(channels_last=False)
    trainer = _trainer(tmp_path, callbacks=callbacks, precision=precision, limit_train_batches=1)
    trainer.fit(task, train_dataloaders=_loader())
    fit_metrics = trainer.test(task, dataloaders=_loader(seed=1), verbose=False)[0]
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    assert not any(key.startswith("teacher") for key in torch.load(path, weights_only=True)["state_dict"])
    reloaded = ImbalanceClassifier.load_from_checkpoint(path)
    assert isinstance(reloaded.model.layer1[0].conv1, DoReFaConv2d)
    tested = _trainer(tmp_path, precision=precision).test(reloaded, dataloaders=_loader(seed=1), verbose=False)[0]
    assert tested == fit_metrics


def test_a_quantized_teacher_is_rebuilt_from_its_checkpoint(teachers: dict[str, str]) -> None:
    kd = KnowledgeDistillation(teachers["qat"])
    kd.setup(None, _task(channels_last=False), "fit")  # type: ignore[arg-type]
    assert isinstance(kd.teacher.layer2[0].conv1, DoReFaConv2d)  # type: ignore[union-attr]
    assert kd.compression_record()["teacher_model"] == "resnet20"


def test_teacher_with_other_classes_is_an_error_at_setup(tmp_path: Path, teachers: dict[str, str]) -> None:
    trainer = _trainer(tmp_path, callbacks=[KnowledgeDistillation(teachers["four_classes"])], max_steps=1)
    with pytest.raises(ValueError, match="has 4 classes but the student has 3"):
        trainer.fit(_task(channels_last=False), train_dataloaders=_loader())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, r"KnowledgeDistillation.alpha must be in \[0, 1\], got 1.5"),
        ({"temperature": 0.0}, "KnowledgeDistillation.temperature must be > 0"),
        ({"teacher_checkpoint": "missing.ckpt"}, "teacher_checkpoint='missing.ckpt': no such file"),
    ],
)
def test_bad_arguments(teachers: dict[str, str], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KnowledgeDistillation(**({"teacher_checkpoint": teachers["fp32"]} | kwargs))


def test_a_cosine_student_of_a_linear_teacher_is_warned(teachers: dict[str, str]) -> None:
    task = _task(channels_last=False, classifier="cosine")
    kd = KnowledgeDistillation(teachers["fp32"])
    with pytest.warns(UserWarning, match="the student's classifier is cosine and the teacher's .* is linear"):
        kd.setup(None, task, "fit")  # type: ignore[arg-type]
