"""Tiny in-memory data and a quiet CPU Trainer for callback and task tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imbcompress.callbacks.run_report import RunReport


def random_loader(num_classes: int, n: int = 16, seed: int = 0, batch_size: int = 8) -> DataLoader:
    """``n`` random 32x32 images with labels cycling through the classes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % num_classes), batch_size=batch_size)


def quiet_trainer(workdir: Path, **kwargs: Any) -> Trainer:
    """One short CPU epoch (2 train / 2 test batches), no logger, checkpoints, bars or summary; kwargs override.

    A ``RunReport`` is added (as the CLI does), so a test writes ``workdir/metrics.json``.
    """
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if not any(isinstance(callback, RunReport) for callback in callbacks):
        callbacks.append(RunReport())
    defaults: dict[str, Any] = dict(
        callbacks=callbacks,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_test_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
    )
    return Trainer(**(defaults | kwargs))


class Interrupt(Callback):
    """Simulates a crash (power loss, pre-emption) after a given optimisation step."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated interruption")


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm2d random affine parameters and running statistics (seeded), so a test that compares two
    models' outputs sees the BatchNorms; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.randn(n, generator=generator)
            module.running_mean = torch.randn(n, generator=generator)
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return model.eval()
