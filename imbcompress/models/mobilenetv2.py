"""MobileNet-V2 (Sandler et al. 2018) adapted to 32x32 inputs (stride-1 stem, SPEC §2)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s), SPEC §2.
CIFAR_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expansion -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow.

    With expansion 1 there is no expansion conv (``expand`` is None) and the block is not prunable.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand_conv: nn.Conv2d | None = None
        if expansion != 1:
            self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_relu = nn.ReLU6()
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_relu = nn.ReLU6()
        self.project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand_conv is not None:
            out = self.expand_relu(self.expand_bn(self.expand_conv(out)))
        out = self.dw_relu(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNet-V2 for CIFAR-sized images.

    Args:
        num_classes: Number of output classes.
        width_mult: Multiplier on every channel count (1.0 is the standard network).
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        stem_width = int(32 * width_mult)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, stem_width, 3, padding=1, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(stem_width))
        self.stem.add_module("relu", nn.ReLU6())
        blocks = []
        in_channels = stem_width
        for expansion, channels, repeats, stride in CIFAR_SETTINGS:
            out_channels = int(channels * width_mult)
            for index in range(repeats):
                blocks.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        last_width = int(1280 * max(1.0, width_mult))
        self.head = nn.Sequential()
        self.head.add_module("conv", nn.Conv2d(in_channels, last_width, 1, bias=False))
        self.head.add_module("bn", nn.BatchNorm2d(last_width))
        self.head.add_module("relu", nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def prunable_blocks(self) -> Iterator[tuple[str, InvertedResidual]]:
        """Yield ``(name, block)`` for inverted-residual blocks that have an expansion conv."""
        for name, module in self.named_modules():
            if isinstance(module, InvertedResidual) and module.expand_conv is not None:
                yield name, module

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return torch.flatten(self.pool(x), 1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
