"""The task: loss-term extension point, schedules, init_from and structural-transform replay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from tiny import quiet_trainer, random_loader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from imbcompress.compress.transforms import TRANSFORMS, register_transform
from imbcompress.task import ImbalanceClassifier, LossContext, lr_factor


def _loader(n: int = 16, num_classes: int = 3) -> DataLoader:
    return random_loader(num_classes, n=n)


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    return quiet_trainer(tmp_path, **kwargs)


class ScaledLogitNorm:
    """A dummy extra term: 0.5 * mean squared logit, and it halves the base loss."""

    base_weight = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ctx: LossContext) -> Tensor:
        self.calls += 1
        assert ctx.stage == "train" and ctx.features.shape[0] == ctx.targets.shape[0]
        return 0.5 * ctx.logits.float().pow(2).mean()


def test_loss_term_extension_point_combines_as_documented() -> None:
    task = ImbalanceClassifier(arch="resnet20", num_classes=3, channels_last=False)
    term = ScaledLogitNorm()
    task.add_loss_term("dummy", term)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    ctx = task._forward((images, labels), "train")
    total, parts = task.compute_loss(ctx)
    expected = 0.5 * F.cross_entropy(ctx.logits, labels) + 0.5 * ctx.logits.pow(2).mean()
    assert torch.allclose(total, expected)
    assert set(parts) == {"base", "dummy"}
    with pytest.raises(ValueError, match="already registered"):
        task.add_loss_term("dummy", term)


def test_loss_term_is_used_in_training_and_gets_gradients(tmp_path: Path) -> None:
    task = ImbalanceClassifier(arch="resnet20", num_classes=3, channels_last=False, lr=0.01)
    term = ScaledLogitNorm()
    task.add_loss_term("dummy", term)
    _trainer(tmp_path).fit(task, train_dataloaders=_loader())
    assert term.calls == 2  # two training batches, and never in evaluation


def test_set_criterion_replaces_cross_entropy() -> None:
    task = ImbalanceClassifier(arch="resnet20", num_classes=3, channels_last=False)
    task.set_criterion(lambda ctx: ctx.logits.float().sum() * 0)
    ctx = task._forward((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])), "train")
    assert task.compute_loss(ctx)[0].item() == 0.0
    with pytest.raises(ValueError, match="only one may replace"):
        task.set_criterion(lambda ctx: ctx.logits.sum())


def test_lr_schedules() -> None:
    assert lr_factor(0, "multistep", 4, 100, [50, 75], 0.1) == pytest.approx(0.25)
    assert lr_factor(49, "multistep", 4, 100, [50, 75], 0.1) == 1.0
    assert lr_factor(50, "multistep", 4, 100, [50, 75], 0.1) == pytest.approx(0.1)
    assert lr_factor(80, "multistep", 4, 100, [50, 75], 0.1) == pytest.approx(0.01)
    assert lr_factor(0, "cosine", 0, 100, [], 0.1) == 1.0
    assert lr_factor(50, "cosine", 0, 100, [], 0.1) == pytest.approx(0.5)
    assert lr_factor(100, "cosine", 0, 100, [], 0.1) == pytest.approx(0.0)
    assert lr_factor(10, "constant", 0, 100, [], 0.1) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lr": 0}, "model.lr"), ({"gamma": 2.0}, "model.gamma"), ({"weight_decay": -1}, "model.weight_decay")],
)
def test_bad_hyperparameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImbalanceClassifier(num_classes=3, **kwargs)


def test_unknown_model_name() -> None:
    with pytest.raises(
        ValueError,
        match=r"model.arch='resnet7' is unknown; close matches: resnet56.*allowed: resnet20",
    ):
        ImbalanceClassifier(arch="resnet7", num_classes=3)  # type: ignore[arg-type]


# A structural transform used only by these tests: widen the classifier's bias to a marker value.
@register_transform("test_marker")
def _marker(model: nn.Module, record: dict) -> None:
    model.classifier.marker = nn.Parameter(torch.full((record["size"],), 0.0))  # type: ignore[union-attr]


def test_transforms_replay_on_load_and_init_from(tmp_path: Path) -> None:
    assert "test_marker" in TRANSFORMS
    task = ImbalanceClassifier(arch="resnet20", num_classes=3, channels_last=False)
    task.apply_transform({"kind": "test_marker", "size": 5})
    with torch.no_grad():
        task.model.classifier.marker.fill_(7.0)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, train_dataloaders=_loader())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    reloaded = ImbalanceClassifier.load_from_checkpoint(path)
    assert reloaded.transforms == [{"kind": "test_marker", "size": 5}]
    assert torch.equal(reloaded.model.classifier.marker, task.model.classifier.marker)
    images = torch.randn(2, 3, 32, 32)
    task.eval(), reloaded.eval()
    assert torch.allclose(task(images), reloaded(images))

    initialised = ImbalanceClassifier(arch="resnet20", num_classes=3, init_from=str(path), channels_last=False)
    assert initialised.transforms == reloaded.transforms
    assert "init_from" not in initialised.hparams
    assert torch.allclose(initialised.eval()(images), task(images))


def test_init_from_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.init_from='.*missing.ckpt': no such checkpoint file"):
        ImbalanceClassifier(num_classes=3, init_from=str(tmp_path / "missing.ckpt"))
    ten_class = ImbalanceClassifier(num_classes=10)
    torch.save({"state_dict": {f"model.{k}": v for k, v in ten_class.model.state_dict().items()}}, tmp_path / "t.ckpt")
    with pytest.raises(ValueError, match="has 10 classes but the data module has 3"):
        ImbalanceClassifier(num_classes=3, init_from=str(tmp_path / "t.ckpt"))


def test_mismatched_checkpoint_compression_is_a_clear_error() -> None:
    task = ImbalanceClassifier(num_classes=3)
    task.apply_transform({"kind": "test_marker", "size": 2})
    with pytest.raises(ValueError, match="compression does not match"):
        task.on_load_checkpoint({"imbcompress_transforms": [{"kind": "test_marker", "size": 3}]})


def test_checkpoint_whose_hparams_say_model_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before ``model`` was renamed ``arch`` rebuild their architecture on load."""
    task = ImbalanceClassifier(arch="resnet32", num_classes=3, shortcut="B", channels_last=False)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, train_dataloaders=_loader())
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["model"] = checkpoint["hyper_parameters"].pop("arch")
    torch.save(checkpoint, path)

    reloaded = ImbalanceClassifier.load_from_checkpoint(path)
    assert reloaded.hparams["arch"] == "resnet32" and len(reloaded.model.layer1) == 5
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(reloaded.eval()(images), task.eval()(images))
    with pytest.raises(ValueError, match="holds a 'resnet32' model but model.arch='resnet20'"):
        ImbalanceClassifier(arch="resnet20", num_classes=3).on_load_checkpoint(
            {"hyper_parameters": {"arch": "resnet32"}}
        )
