"""QuantizationAwareTraining callback: setup-time insertion, master weights, checkpoint reload, size, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from tiny import quiet_trainer, random_loader
from torch.utils.data import DataLoader

from imbcompress.callbacks.quantization_aware_training import QuantizationAwareTraining
from imbcompress.compress.dorefa import DoReFaConv2d, QuantizedReLU
from imbcompress.compress.size import model_size
from imbcompress.models import build_model
from imbcompress.task import ImbalanceClassifier

NUM_CLASSES = 3


def _loader(seed: int = 0, n: int = 16) -> DataLoader:
    return random_loader(NUM_CLASSES, n=n, seed=seed)


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, **kwargs)


def _test_metrics(trainer: Trainer, task: ImbalanceClassifier | None = None, ckpt_path: Path | None = None) -> dict:
    results = trainer.test(
        task, dataloaders=_loader(seed=1), ckpt_path=None if ckpt_path is None else str(ckpt_path), verbose=False
    )[0]
    return {key: results[key] for key in ("test/accuracy", "test/macro_f1", "test/loss")}


def _task(**kwargs) -> ImbalanceClassifier:
    torch.manual_seed(0)
    return ImbalanceClassifier(arch="resnet20", num_classes=NUM_CLASSES, lr=0.05, **kwargs)


def test_fit_trains_master_weights_and_every_reload_gives_the_same_test_metrics(tmp_path: Path) -> None:
    task = _task(channels_last=False)
    qat = QuantizationAwareTraining(weight_bits=3, activation_bits=3)
    master = task.model.layer1[0].conv1.weight
    initial = master.detach().clone()
    trainer = _trainer(tmp_path, callbacks=[qat])
    trainer.fit(task, train_dataloaders=_loader())
    conv = task.model.layer1[0].conv1
    assert isinstance(conv, DoReFaConv2d) and conv.weight is master  # the optimizer updated the same Parameter
    assert not torch.equal(master, initial) and master.unique().numel() > 8
    assert conv.weight_quantizer(master).unique().numel() <= 8
    fit_metrics = _test_metrics(trainer, task)
    assert len(task.transforms) == 1  # setup ran for fit and for test; the quantizers went in once
    path = tmp_path / "qat.ckpt"
    trainer.save_checkpoint(path)

    with_callback = _trainer(tmp_path, callbacks=[QuantizationAwareTraining(weight_bits=3, activation_bits=3)])
    assert _test_metrics(with_callback, _task(channels_last=False), ckpt_path=path) == fit_metrics
    assert _test_metrics(_trainer(tmp_path), _task(channels_last=False), ckpt_path=path) == fit_metrics
    reloaded = ImbalanceClassifier.load_from_checkpoint(path)
    assert isinstance(reloaded.model.layer2[0].relu1, QuantizedReLU)
    assert _test_metrics(_trainer(tmp_path), reloaded) == fit_metrics


def test_init_from_a_qat_checkpoint_does_not_quantize_twice(tmp_path: Path) -> None:
    task = _task(channels_last=False)
    trainer = _trainer(tmp_path, callbacks=[QuantizationAwareTraining()], max_steps=1)
    trainer.fit(task, train_dataloaders=_loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    resumed = _task(channels_last=False, init_from=str(tmp_path / "a.ckpt"))
    qat = QuantizationAwareTraining()
    _trainer(tmp_path, callbacks=[qat], max_steps=1).fit(resumed, train_dataloaders=_loader())
    assert [record["kind"] for record in resumed.transforms] == ["dorefa"]
    assert qat.compression_record()["layers"] == resumed.transforms[0]["layers"]


def test_bf16_channels_last_fit_keeps_activations_on_the_grid(tmp_path: Path) -> None:
    task = _task(channels_last=True)
    seen: list[torch.Tensor] = []
    trainer = _trainer(tmp_path, callbacks=[QuantizationAwareTraining(2, 2)], precision="bf16-mixed")
    trainer.fit(task, train_dataloaders=_loader())
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    task.model.layer1[1].relu1.register_forward_hook(lambda m, i, out: seen.append(out))
    images = next(iter(_loader()))[0].contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = task.model.train()(images)
    assert torch.isfinite(logits).all() and seen[0].dtype == torch.bfloat16 and seen[0].unique().numel() <= 4


def test_compression_record_and_model_size() -> None:
    task = ImbalanceClassifier(arch="resnet20", num_classes=10, channels_last=False)
    qat = QuantizationAwareTraining(weight_bits=4, activation_bits=8)
    qat.setup(None, task, "fit")  # type: ignore[arg-type]
    record = qat.compression_record()
    assert record["method"] == "dorefa" and (record["weight_bits"], record["activation_bits"]) == (4, 8)
    assert len(record["layers"]) == 18 and "stem.conv" not in record["layers"]
    # [C24] Table A8 for ResNet-20: (A8, W4) 1.53 Mib and (A3, W3) 0.76 Mib (truncated to two decimals).
    assert math.floor(model_size(task.model, activation_bits=8)["paper_mibit"] * 100) == 153
    other = ImbalanceClassifier(arch="resnet20", num_classes=10, channels_last=False)
    QuantizationAwareTraining(3, 3).setup(None, other, "fit")  # type: ignore[arg-type]
    assert math.floor(model_size(other.model, activation_bits=3)["paper_mibit"] * 100) == 76
    assert (
        model_size(task.model)["weight_storage_bits"] < model_size(build_model("resnet20", 10))["weight_storage_bits"]
    )


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_bad_bits(bits: int) -> None:
    with pytest.raises(ValueError, match=r"QuantizationAwareTraining.weight_bits must be an integer in 1\.\.8 or 32"):
        QuantizationAwareTraining(weight_bits=bits)
    with pytest.raises(ValueError, match="QuantizationAwareTraining.activation_bits"):
        QuantizationAwareTraining(activation_bits=bits)


def test_bad_exclude(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="QuantizationAwareTraining.exclude"):
        QuantizationAwareTraining(exclude=[""])
    trainer = _trainer(tmp_path, callbacks=[QuantizationAwareTraining(exclude=["stem", "fc"])], max_steps=1)
    with pytest.raises(ValueError, match=r"exclude names modules the model does not have: \['fc'\]"):
        trainer.fit(_task(channels_last=False), train_dataloaders=_loader())


def test_init_from_a_qat_checkpoint_with_another_exclude_is_an_error(tmp_path: Path) -> None:
    task = _task(channels_last=False)
    trainer = _trainer(tmp_path, callbacks=[QuantizationAwareTraining(4, 8)], max_steps=1)
    trainer.fit(task, train_dataloaders=_loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    other = QuantizationAwareTraining(4, 8, exclude=["stem", "classifier"])
    again = _trainer(tmp_path, callbacks=[other], max_steps=1)
    with pytest.raises(ValueError, match=r"QuantizationAwareTraining\.exclude: .* exclude=None, but .* exclude=\["):
        again.fit(_task(channels_last=False, init_from=str(tmp_path / "a.ckpt")), train_dataloaders=_loader())
