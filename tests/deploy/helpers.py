"""Small models trained a few steps on a learnable generated task, for the deploy tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imbcompress.compress.dorefa import apply_dorefa, dorefa_record
from imbcompress.models import build_model


def learnable_images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Normalised 32x32 images whose class is a colour plus noise (learnable in a few steps), and their labels."""
    centres = torch.randint(40, 216, (10, 3), generator=torch.Generator().manual_seed(0)).float()
    labels = torch.arange(n) % 10
    noise = 30 * torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return ((centres[labels][:, :, None, None] + noise).clamp(0, 255) / 255 - 0.5) / 0.25, labels


def train_few_steps(model: nn.Module, steps: int = 20, lr: float = 3e-3) -> nn.Module:
    """A few Adam steps at batch 32 (20 steps reach ~70 % on the generated task)."""
    images, labels = learnable_images(640, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def dorefa_model(weight_bits: int, activation_bits: int, name: str = "resnet20") -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 10)
    apply_dorefa(model, dorefa_record(model, weight_bits, activation_bits, None))
    return model
