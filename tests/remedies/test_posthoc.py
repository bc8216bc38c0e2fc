"""Post-hoc adjustment at test: exact arithmetic on a model's logits, the model and checkpoint left unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from imbcompress.callbacks import PostHocAdjustment
from imbcompress.compress.dorefa import dorefa_record
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("data"), train_per_class=12, test_per_class=2)


def _datamodule(root: Path) -> ImbalancedDataModule:
    return ImbalancedDataModule(dataset="cifar10", root=str(root), profile="exponential", imbalance_ratio=4)


def _trainer(workdir: Path, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=1,
        limit_val_batches=0,
        default_root_dir=workdir,
    )


class _LogitsProbe(Callback):
    """The model's logits on each test batch, as the test sees them (after any adjustment)."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []
        self.logits: list[Tensor] = []

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        with torch.no_grad():
            self.inputs.append(batch[0])
            self.logits.append(pl_module(batch[0]).float())


def _state(task: ImbalanceClassifier) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in task.model.state_dict().items()}


def _test(task: ImbalanceClassifier, root: Path, workdir: Path, posthoc: PostHocAdjustment) -> _LogitsProbe:
    probe = _LogitsProbe()
    _trainer(workdir, [posthoc, probe]).test(task, datamodule=_datamodule(root), verbose=False)
    return probe


def test_logit_adjustment_tau_one_equals_the_arithmetic_by_hand(data_root: Path, tmp_path: Path) -> None:
    task = ImbalanceClassifier(num_classes=10)
    task.eval()
    before = _state(task)
    probe = _test(task, data_root, tmp_path, PostHocAdjustment("logit_adjustment", tau=1.0))
    counts = torch.tensor(_datamodule(data_root).train_class_counts, dtype=torch.float64)
    log_prior = (counts / counts.sum()).log()
    for inputs, adjusted in zip(probe.inputs, probe.logits):
        with torch.no_grad():
            plain = task(inputs).double()  # the model is back to its own weights after the test
        torch.testing.assert_close(adjusted.double(), plain - log_prior, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(value, before[key]) for key, value in task.model.state_dict().items())
    assert task.last_test_results is not None


def test_tau_norm_zero_is_the_identity_and_one_gives_unit_rows(data_root: Path, tmp_path: Path) -> None:
    task = ImbalanceClassifier(num_classes=10)
    task.eval()
    identity = _test(task, data_root, tmp_path, PostHocAdjustment("tau_norm", tau=0.0))
    for inputs, logits in zip(identity.inputs, identity.logits):
        with torch.no_grad():
            assert torch.equal(logits, task(inputs).float())
    weight, bias = task.model.classifier.weight.detach().clone(), task.model.classifier.bias.detach()
    unit = _test(task, data_root, tmp_path, PostHocAdjustment("tau_norm", tau=1.0))
    for inputs, logits in zip(unit.inputs, unit.logits):
        with torch.no_grad():
            features = task.model.forward_features(inputs)
        expected = features @ (weight / weight.norm(dim=1, keepdim=True)).T + bias
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(task.model.classifier.weight, weight)


def test_the_saved_checkpoint_is_unchanged(data_root: Path, tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _trainer(tmp_path, [checkpoint]).fit(ImbalanceClassifier(num_classes=10), datamodule=_datamodule(data_root))
    ckpt = tmp_path / "last.ckpt"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    fresh = ImbalanceClassifier(num_classes=10)
    _trainer(tmp_path, [PostHocAdjustment("logit_adjustment"), PostHocAdjustment("tau_norm", tau=0.5)]).test(
        fresh, datamodule=_datamodule(data_root), ckpt_path=str(ckpt), verbose=False
    )
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(fresh.model.classifier.bias, saved["model.classifier.bias"])
    assert torch.equal(fresh.model.classifier.weight, saved["model.classifier.weight"])


def test_a_quantized_classifier_refuses_tau_norm_and_takes_logit_adjustment(data_root: Path, tmp_path: Path) -> None:
    task = ImbalanceClassifier(num_classes=10)
    task.apply_transform(dorefa_record(task.model, weight_bits=3, activation_bits=32, exclude=["stem.conv"]))
    assert hasattr(task.model.classifier, "weight_quantizer")
    with pytest.raises(ValueError, match="method='tau_norm'.* cannot normalise a quantized classifier .*weight_bits=3"):
        _test(task, data_root, tmp_path, PostHocAdjustment("tau_norm"))
    task.eval()
    probe = _test(task, data_root, tmp_path, PostHocAdjustment("logit_adjustment", tau=0.5))
    counts = torch.tensor(_datamodule(data_root).train_class_counts, dtype=torch.float64)
    with torch.no_grad():
        plain = task(probe.inputs[0]).double()
    torch.testing.assert_close(
        probe.logits[0].double(), plain - 0.5 * (counts / counts.sum()).log(), atol=1e-5, rtol=1e-5
    )


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="PostHocAdjustment.tau must be a number >= 0, got -1"):
        PostHocAdjustment("tau_norm", tau=-1)
    with pytest.raises(ValueError, match="PostHocAdjustment.method must be 'logit_adjustment' or 'tau_norm'"):
        PostHocAdjustment("bias")  # type: ignore[arg-type]
