"""TensorBatchLoader: order, sharding, exact-once evaluation, and exact mid-epoch resume (also under a Trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from imbcompress.data.loader import TensorBatchLoader


def _data(n: int) -> tuple[Tensor, Tensor]:
    """Images whose every pixel holds the sample id, and the id as label: batches show what they contain."""
    ids = torch.arange(n)
    return ids.view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(), ids


def _ids(loader: TensorBatchLoader) -> list[list[int]]:
    batches = []
    for images, labels in loader:
        assert torch.equal(images[:, 0, 0, 0], labels)  # images and labels stay together
        batches.append(labels.tolist())
    return batches


def test_training_order_depends_on_seed_and_epoch_only() -> None:
    epoch = {"value": 0}
    loader = TensorBatchLoader(*_data(50), batch_size=8, train=True, seed=1, epoch_fn=lambda: epoch["value"])
    first = _ids(loader)
    assert _ids(loader) == first  # iterating again is not a new epoch
    assert sorted(sum(first, [])) == list(range(50))
    assert [len(b) for b in first] == [8] * 6 + [2]
    epoch["value"] = 1
    assert _ids(loader) != first
    other_seed = TensorBatchLoader(*_data(50), batch_size=8, train=True, seed=2)
    assert _ids(other_seed) != first
    epoch["value"] = 0
    assert _ids(TensorBatchLoader(*_data(50), batch_size=8, train=True, seed=1)) == first  # set_epoch default 0


def test_training_shards_are_disjoint_equal_and_drop_singleton_batches() -> None:
    shards = [TensorBatchLoader(*_data(23), batch_size=5, train=True, rank=r, world_size=2) for r in range(2)]
    ids = [sum(_ids(s), []) for s in shards]
    assert not set(ids[0]) & set(ids[1])
    # 23 -> 22 usable -> 11 per rank -> batches 5, 5 and a last batch of 1 sample, which is dropped
    assert [[len(b) for b in _ids(s)] for s in shards] == [[5, 5], [5, 5]]
    assert len(shards[0]) == len(shards[1]) == 2
    assert len(TensorBatchLoader(*_data(24), batch_size=5, train=True, rank=0, world_size=2)) == 3  # 12 = 5+5+2


@pytest.mark.parametrize(("n", "world_size", "batch_size"), [(10, 2, 3), (11, 2, 4), (7, 3, 100), (5, 4, 1)])
def test_evaluation_shards_cover_every_sample_exactly_once(n: int, world_size: int, batch_size: int) -> None:
    loaders = [TensorBatchLoader(*_data(n), batch_size, rank=r, world_size=world_size) for r in range(world_size)]
    seen = [sum(_ids(loader), []) for loader in loaders]
    assert sum(seen, []) == list(range(n))  # contiguous shards, in order, no padding, no duplicates
    assert max(map(len, seen)) - min(map(len, seen)) <= 1
    assert all(len(loader) == len(_ids(loader)) for loader in loaders)


def test_state_resumes_with_the_remaining_batches() -> None:
    def make() -> TensorBatchLoader:
        return TensorBatchLoader(*_data(40), batch_size=4, train=True, seed=3, rank=1, world_size=2)

    expected = _ids(make())
    loader = make()
    iterator = iter(loader)
    taken = [next(iterator)[1].tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["batches_yielded"] == 2

    again = make()
    again.load_state_dict(state)
    assert again.state_dict()["batches_yielded"] == 2  # a checkpoint written before iterating keeps the position
    assert taken + _ids(again) == expected
    assert _ids(again) == expected  # the loaded position applies once

    rank0 = TensorBatchLoader(*_data(40), batch_size=4, train=True, seed=3, rank=0, world_size=2)
    rank0.load_state_dict(state)  # written by rank 1: all ranks are at the same batch, so it fits rank 0 too
    assert _ids(rank0) == _ids(TensorBatchLoader(*_data(40), 4, train=True, seed=3, rank=0, world_size=2))[2:]


def test_state_of_another_epoch_is_ignored_and_mismatches_are_errors() -> None:
    epoch = {"value": 0}
    loader = TensorBatchLoader(*_data(20), batch_size=4, train=True, epoch_fn=lambda: epoch["value"])
    full = _ids(loader)
    state = loader.state_dict()  # epoch 0 finished
    epoch["value"] = 1
    expected_next = _ids(loader)
    fresh = TensorBatchLoader(*_data(20), batch_size=4, train=True, epoch_fn=lambda: epoch["value"])
    fresh.load_state_dict(state)
    assert _ids(fresh) == expected_next != full
    for change in ({"batch_size": 5}, {"world_size": 2}, {"num_samples": 21}, {"seed": 9}):
        with pytest.raises(ValueError, match=f"cannot resume the training loader mid-epoch: {next(iter(change))}"):
            loader.load_state_dict({**state, **change})


class _RecordingModule(LightningModule):
    """Records the sample ids of every training batch it sees."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size
        self.layer = nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def train_dataloader(self) -> TensorBatchLoader:
        images, ids = _data(self.n)
        return TensorBatchLoader(
            images, ids, self.batch_size, train=True, seed=7, epoch_fn=lambda: self.trainer.current_epoch
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen.append(batch[1].tolist())
        return self.layer(batch[0][:, :1, 0, 0].float()).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(module: LightningModule, root: Path, ckpt_path: str | None = None, **trainer_kwargs) -> None:
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(module, ckpt_path=ckpt_path)


@pytest.mark.parametrize("step", [3, 5, 7, 12])  # mid-epoch 0, end of epoch 0, mid-epoch 1, mid-epoch 2
def test_lightning_resume_from_a_mid_epoch_checkpoint_sees_the_same_batches(tmp_path: Path, step: int) -> None:
    full = _RecordingModule(n=18, batch_size=4)  # 5 batches per epoch (the last one has 2 samples)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _fit(full, tmp_path, callbacks=[checkpoint])
    assert len(full.seen) == 15

    resumed = _RecordingModule(n=18, batch_size=4)
    _fit(resumed, tmp_path / "resume", ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt"))
    assert resumed.seen == full.seen[step:]


# ----------------------------------------------------------------------------------- re-sampling (docs/remedies.md)
def _labelled(n: int) -> tuple[Tensor, Tensor]:
    """Sample ids as images; labels skewed 0 >> 1 >> 2 so that re-sampling changes the order."""
    images, ids = _data(n)
    return images, (ids * 7 % n < n // 8).long() + (ids % 5 == 0).long()


@pytest.mark.parametrize(("sampler", "switch"), [("class_balanced", None), ("square_root", None), ("deferred", 1)])
def test_resampled_state_resumes_with_the_remaining_batches(sampler: str, switch: int | None) -> None:
    epoch = {"value": 1}

    def make() -> TensorBatchLoader:
        return TensorBatchLoader(
            *_labelled(40), 4, train=True, seed=3, sampler=sampler, sampler_switch_epoch=switch,
            epoch_fn=lambda: epoch["value"],
        )  # fmt: skip

    def ids(loader: TensorBatchLoader) -> list[list[int]]:
        return [images[:, 0, 0, 0].tolist() for images, _ in loader]

    expected = ids(make())
    loader = make()
    iterator = iter(loader)
    taken = [next(iterator)[0][:, 0, 0, 0].tolist() for _ in range(3)]
    again = make()
    again.load_state_dict(loader.state_dict())
    assert taken + ids(again) == expected
    assert loader.state_dict()["sampling"] == sampler
    with pytest.raises(ValueError, match=f"sampling: saved {sampler}, now instance_balanced"):
        TensorBatchLoader(*_labelled(40), 4, train=True, seed=3).load_state_dict(loader.state_dict())


def test_a_state_saved_before_samplers_existed_loads_as_instance_balanced() -> None:
    loader = TensorBatchLoader(*_data(20), batch_size=4, train=True)
    old = {k: v for k, v in loader.state_dict().items() if not k.startswith("sampling")}
    loader.load_state_dict(old)  # no error: it was the instance-balanced order
    with pytest.raises(ValueError, match="sampling: saved instance_balanced, now class_balanced"):
        TensorBatchLoader(*_data(20), 4, train=True, sampler="class_balanced").load_state_dict(old)


class _ResampledRecordingModule(_RecordingModule):
    def train_dataloader(self) -> TensorBatchLoader:
        images, _ = _data(self.n)
        _, labels = _labelled(self.n)
        return TensorBatchLoader(
            images, labels, self.batch_size, train=True, seed=7, epoch_fn=lambda: self.trainer.current_epoch,
            sampler="progressive", max_epochs=3,
        )  # fmt: skip

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen.append(batch[0][:, 0, 0, 0].tolist())  # sample ids (the labels here are classes)
        return self.layer(batch[0][:, :1, 0, 0].float()).mean()


@pytest.mark.parametrize("step", [3, 7])
def test_lightning_resume_of_a_resampled_epoch_sees_the_same_batches(tmp_path: Path, step: int) -> None:
    full = _ResampledRecordingModule(n=18, batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _fit(full, tmp_path, callbacks=[checkpoint])
    resumed = _ResampledRecordingModule(n=18, batch_size=4)
    _fit(resumed, tmp_path / "resume", ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt"))
    assert resumed.seen == full.seen[step:]
    epochs = [sum(full.seen[e * 5 : (e + 1) * 5], []) for e in range(3)]
    assert any(len(set(ids)) < len(ids) for ids in epochs)  # drawn with replacement, not a permutation
