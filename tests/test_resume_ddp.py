"""Interrupted runs resume to the same result; a 2-process CPU DDP fit reports whole-test-set metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import fake_data_args, run_ddp_fit
from fakedata import make_fake_cifar
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import Interrupt

from imbcompress.callbacks import ClimbQ
from imbcompress.data import ImbalancedDataModule
from imbcompress.task import ImbalanceClassifier


def _run(
    root: Path,
    workdir: Path,
    *,
    interrupt_at: int | None = None,
    ckpt_path: str | None = None,
    methods: Callable[[], list[Callback]] = list,
) -> ImbalanceClassifier:
    torch.manual_seed(0)
    datamodule = ImbalancedDataModule(
        dataset="cifar10", root=str(root), profile="exponential", imbalance_ratio=4, batch_size=16, subset_seed=1
    )
    task = ImbalanceClassifier(arch="resnet20", num_classes=10, channels_last=False, lr=0.05, scheduler="cosine")
    callbacks: list[Callback] = [
        *methods(),
        ModelCheckpoint(dirpath=workdir / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=3),
    ]
    if interrupt_at is not None:
        callbacks.append(Interrupt(interrupt_at))
    trainer = Trainer(
        accelerator="cpu",
        precision="32-true",
        deterministic=True,
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    trainer.test(task, datamodule=datamodule, verbose=False)
    return task


# Compression methods whose callbacks keep state across steps must save it (ClimbQ+: HomoVar's estimates).
METHODS: dict[str, Callable[[], list[Callback]]] = {"fp32": list, "climbq_plus": lambda: [ClimbQ(bits=2, homovar=True)]}


@pytest.mark.parametrize("method", METHODS)
def test_resume_mid_epoch_matches_uninterrupted_run(method: str, tmp_path: Path) -> None:
    root = make_fake_cifar(tmp_path / "data", train_per_class=20, test_per_class=4)
    methods = METHODS[method]
    # exp rho 4 on 20/class: 20 17 14 12 10 8 7 5 4 5 ... -> ~ 8 batches of 16 per epoch, 2 epochs
    reference = _run(root, tmp_path / "reference", methods=methods)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _run(root, tmp_path / "interrupted", interrupt_at=11, methods=methods)  # crashes mid-way through epoch 2
    last = tmp_path / "interrupted/ckpt/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 9  # the last save before the crash: mid-epoch
    resumed = _run(root, tmp_path / "interrupted", ckpt_path=str(last), methods=methods)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert reference.last_test_results == resumed.last_test_results


@pytest.mark.slow
def test_two_process_cpu_ddp_fit(tmp_path: Path) -> None:
    root = make_fake_cifar(tmp_path / "data", train_per_class=16, test_per_class=7)  # 70 test images: uneven shards
    args = ["--data=imbcompress.data.ImbalancedDataModule", *fake_data_args(root), "--data.init_args.batch_size=8"]
    metrics = run_ddp_fit([*args, "--trainer.max_epochs=1"], tmp_path / "run")
    assert metrics["world_size"] == 2
    assert metrics["test"]["num_samples"] == 70  # every test image exactly once, no padding duplicates
    assert [sum(row) for row in metrics["test"]["confusion_matrix"]] == [7] * 10
