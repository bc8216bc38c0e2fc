"""CIFAR ResNets (He et al. 2016, Sec. 4.2): depth 6n + 2 with three stages of widths 16, 32, 64."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B"]


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class ConvShortcut(nn.Sequential):
    """Option B shortcut: 1x1 convolution with stride, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``conv1`` is the block's inner layer: its output width can shrink (filter pruning) without
    changing the width of the residual stream.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            builder = PadShortcut if shortcut == "A" else ConvShortcut
            self.shortcut = builder(in_channels, out_channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Stem(nn.Sequential):
    """conv3x3(3 -> width) + BatchNorm + ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``blocks_per_stage`` basic blocks in each of three stages.

    Args:
        blocks_per_stage: n in depth = 6n + 2 (3 gives ResNet-20, 9 gives ResNet-56).
        num_classes: Number of output classes.
        shortcut: "A" (parameter-free, zero padding) or "B" (1x1 conv + BN) on a width/stride change.
    """

    widths = (16, 32, 64)

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, shortcut: Shortcut = "A") -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.stem = Stem(self.widths[0])
        in_channels = self.widths[0]
        stages = []
        for index, width in enumerate(self.widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def prunable_blocks(self) -> Iterator[tuple[str, BasicBlock]]:
        """Yield ``(name, block)`` for every residual block (their ``conv1`` output width may shrink)."""
        for name, module in self.named_modules():
            if isinstance(module, BasicBlock):
                yield name, module

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
