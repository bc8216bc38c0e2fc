"""ImbalancedDataModule on generated CIFAR and image-folder files: counts, loaders, transfer hook, errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fakedata import make_fake_cifar, make_fake_image_folder
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from imbcompress.data import ImbalancedDataModule, sources
from imbcompress.data.augment import channel_stats, normalize
from imbcompress.data.imbalance import class_counts
from imbcompress.data.sources import CIFAR10_CLASSES

REAL_CIFAR_JPG = Path("/tmp/data/cifar_jpg")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", train_per_class=40, test_per_class=7)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_fake_image_folder(tmp_path / "folder", num_classes=3, train_per_class=[30, 20, 12], test_per_class=4)


def _fake_trainer(rank: int = 0, world_size: int = 1, training: bool = False, **extra) -> SimpleNamespace:
    fields = {
        "global_rank": rank,
        "world_size": world_size,
        "is_global_zero": rank == 0,
        "training": training,
        "current_epoch": 0,
        "loggers": [],
        "strategy": SimpleNamespace(root_device=torch.device("cpu")),
    }
    return SimpleNamespace(**{**fields, **extra})


def _labels(loader) -> list[int]:
    return [label for _, labels in loader for label in labels.tolist()]


def test_init_knows_classes_without_loading(cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_read_cifar_batches", None)  # any decoding would fail
    dm = ImbalancedDataModule("cifar10", str(cifar_root), profile="exponential", imbalance_ratio=100)
    assert dm.num_classes == 10
    assert dm.class_names == list(CIFAR10_CLASSES)


def test_setup_selects_the_profile_counts(cifar_root: Path, capsys: pytest.CaptureFixture) -> None:
    dm = ImbalancedDataModule("cifar10", str(cifar_root), profile="exponential", imbalance_ratio=10, subset_seed=1)
    dm.setup("fit")
    expected = class_counts("exponential", 10, 40, 10)  # n_max = the largest class of the source
    assert dm.train_class_counts == expected
    assert dm.test_class_counts == [7] * 10
    assert _labels(dm.test_dataloader()) == dm._test.labels.tolist()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["class", "train", "test"]
    assert lines[1].split() == ["airplane", str(expected[0]), "7"]
    assert lines[-1].split() == ["total", str(sum(expected)), "70"]
    assert (dm.mean, dm.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_step_profile_with_head_last(cifar_root: Path) -> None:
    dm = ImbalancedDataModule(
        "cifar10", str(cifar_root), profile="step", imbalance_ratio=4, minority_classes=3, head="last"
    )
    assert dm.train_class_counts == [10, 10, 10] + [40] * 7


def test_validation_split_is_stratified(cifar_root: Path) -> None:
    dm = ImbalancedDataModule("cifar10", str(cifar_root), profile="exponential", imbalance_ratio=10, val_fraction=0.25)
    dm.setup("fit")
    val_counts = torch.bincount(torch.tensor(_labels(dm.val_dataloader())), minlength=10).tolist()
    subset = class_counts("exponential", 10, 40, 10)
    assert [t + v for t, v in zip(dm.train_class_counts, val_counts)] == subset
    assert min(dm.train_class_counts) >= 1 and min(val_counts) >= 1
    assert len(_labels(dm.test_dataloader())) == 70


def test_image_folder_balanced_keeps_all_and_uses_subset_statistics(folder_root: Path) -> None:
    dm = ImbalancedDataModule("image_folder", str(folder_root))
    dm.setup("fit")
    assert dm.train_class_counts == [30, 20, 12]
    images = torch.cat([images for images, _ in dm.train_dataloader()])
    mean, std = channel_stats(images)
    assert dm.mean == pytest.approx(mean) and dm.std == pytest.approx(std)


def test_image_folder_imbalanced_uses_the_largest_class(folder_root: Path) -> None:
    dm = ImbalancedDataModule("image_folder", str(folder_root), profile="linear", imbalance_ratio=3)
    assert dm.train_class_counts == [30, 20, 10]
    with pytest.raises(ValueError, match=r"'class_01' \(label 1\): 20 < 21; 'class_02' \(label 2\): 12 < 15"):
        ImbalancedDataModule("image_folder", str(folder_root), profile="exponential", imbalance_ratio=2)


def test_loaders_shard_across_simulated_ranks(cifar_root: Path) -> None:
    dm = ImbalancedDataModule("cifar10", str(cifar_root), profile="exponential", imbalance_ratio=10, batch_size=8)
    dm.setup("fit")
    test_ids, train_ids = [], []
    for rank in range(2):
        dm.trainer = _fake_trainer(rank=rank, world_size=2)
        test_ids.append([img[:, 0, 0].tolist() for img, _ in dm.test_dataloader()])
        train_ids.append(_labels(dm.train_dataloader()))
    dm.trainer = None
    whole = [img[:, 0, 0].tolist() for img, _ in dm.test_dataloader()]
    assert sum(test_ids[0] + test_ids[1], []) == sum(whole, [])  # every test image exactly once
    assert len(train_ids[0]) == len(train_ids[1])
    assert sum(torch.bincount(torch.tensor(train_ids[0] + train_ids[1])).tolist()) <= sum(dm.train_class_counts)


def test_after_batch_transfer_normalises_and_augments_training_batches_only(cifar_root: Path) -> None:
    dm = ImbalancedDataModule("cifar10", str(cifar_root))
    dm.setup("fit")
    images, labels = next(iter(dm.test_dataloader()))
    expected = normalize(images, dm.mean, dm.std)
    dm.trainer = _fake_trainer(training=False)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out.dtype == torch.float32 and torch.equal(out, expected) and torch.equal(out_labels, labels)
    dm.trainer = _fake_trainer(training=True)
    augmented, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert augmented.shape == expected.shape and not torch.equal(augmented, expected)
    dm.augment = False
    assert torch.equal(dm.on_after_batch_transfer((images, labels), 0)[0], expected)


def test_describe_and_checkpoint_check(cifar_root: Path) -> None:
    dm = ImbalancedDataModule("cifar10", str(cifar_root), profile="step", imbalance_ratio=4, minority_classes=2)
    info = dm.describe()
    assert set(info) == {
        "dataset",
        "root",
        "imbalance",
        "class_names",
        "train_class_counts",
        "test_class_counts",
        "val_fraction",
        "shuffle_seed",
    }
    assert info["imbalance"] == {"profile": "step", "ratio": 4.0, "minority_classes": 2, "head": "first", "seed": 0}
    assert info["train_class_counts"] == [40] * 8 + [10] * 2
    dm.load_state_dict(dm.state_dict())
    other = ImbalancedDataModule("cifar10", str(cifar_root))
    with pytest.raises(ValueError, match=r"trained with train_class_counts=\[40, .*, 10\] but this data configuration"):
        other.load_state_dict(dm.state_dict())


def test_the_shuffle_seed_follows_seed_everything_unless_given(
    cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert ImbalancedDataModule("cifar10", str(cifar_root), subset_seed=3).shuffle_seed == 3  # no global seed
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what seed_everything(7) and the CLI's --seed_everything 7 set
    assert ImbalancedDataModule("cifar10", str(cifar_root), subset_seed=3).shuffle_seed == 7
    assert ImbalancedDataModule("cifar10", str(cifar_root), subset_seed=3, shuffle_seed=2).shuffle_seed == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dataset": "mnist"}, ValueError, "dataset must be one of"),
        ({"profile": "zipf"}, ValueError, "profile must be one of"),
        ({"profile": "exponential", "imbalance_ratio": 0.5}, ValueError, "imbalance_ratio must be >= 1"),
        ({"profile": "step", "imbalance_ratio": 10}, ValueError, "profile 'step' needs minority_classes"),
        ({"profile": "exponential", "imbalance_ratio": 1e9}, ValueError, "imbalance_ratio=1000000000.0 .* zero"),
        ({"head": "middle"}, ValueError, "head must be one of"),
        ({"val_fraction": 1.0}, ValueError, r"val_fraction must be in \[0, 1\)"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"eval_batch_size": 0}, ValueError, "eval_batch_size must be at least 1"),
        ({"subset_seed": -1}, ValueError, "non-negative"),
        ({"root": "/nonexistent/data"}, FileNotFoundError, r"cifar-10-batches-py.*Set `root`"),
        ({"dataset": "image_folder", "root": "/nonexistent"}, FileNotFoundError, r"train.*set `root`"),
        ({"dataset": "image_folder", "download": True}, ValueError, "download only applies to the CIFAR"),
    ],
)
def test_bad_settings_fail_at_init_naming_the_setting(
    cifar_root: Path, kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ImbalancedDataModule(**{"root": str(cifar_root), **kwargs})


class _Recorder(LightningModule):
    """Records a fingerprint of every (augmented, normalised) training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 10)
        self.seen: list[tuple[list[int], float]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        self.seen.append((labels.tolist(), round(float(images.double().sum()), 3)))
        return nn.functional.cross_entropy(self.layer(images.mean((2, 3))), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_resume_repeats_the_same_augmented_batches(cifar_root: Path, tmp_path: Path) -> None:
    def fit(module: LightningModule, root: Path, ckpt_path: str | None = None, callbacks: list | None = None) -> None:
        dm = ImbalancedDataModule(
            "cifar10", str(cifar_root), profile="exponential", imbalance_ratio=10, batch_size=32, shuffle_seed=5
        )
        trainer = Trainer(
            default_root_dir=root,
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=callbacks,
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    full = _Recorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    fit(full, tmp_path, callbacks=[checkpoint])
    per_epoch = len(full.seen) // 2
    assert per_epoch == 5  # 159 images in batches of 32
    resumed = _Recorder()
    fit(resumed, tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "step=7.ckpt"))
    assert resumed.seen == full.seen[7:]


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_CIFAR_JPG / "train").is_dir(), reason="shared CIFAR-10 JPEG copy not unpacked")
def test_shared_cifar10_jpeg_copy_is_recognised() -> None:
    dm = ImbalancedDataModule("image_folder", str(REAL_CIFAR_JPG), profile="exponential", imbalance_ratio=100)
    assert dm.class_names == list(CIFAR10_CLASSES)
