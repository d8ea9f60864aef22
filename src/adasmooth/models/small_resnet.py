"""A compact pre-activation ResNet for small grayscale or colour images (e.g. Fashion-MNIST 28x28).

The three stages are plain attributes (``stage1``, ``stage2``, ``stage3``), so a feature tap can read an
early and a middle stage by name without editing the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model, so the model takes images in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with an identity or 1x1-conv shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class SmallResNet(nn.Module):
    """Pre-activation ResNet with three stages (widths ``w, 2w, 4w``; strides 1, 2, 2).

    Parameters
    ----------
    in_channels : int
        1 for grayscale, 3 for colour.
    num_classes : int
    width : int
        Channels of the first stage.
    blocks : sequence of three ints
        Residual blocks per stage.
    mean, std : per-channel normalisation applied inside the model.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1),
        mean: Sequence[float] = (0.2860,),
        std: Sequence[float] = (0.3530,),
    ):
        super().__init__()
        if len(blocks) != 3:
            raise ValueError(f"blocks must list three stage depths, got {list(blocks)}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} entries, got {list(mean)} / {list(std)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        widths = (width, 2 * width, 4 * width)
        stages = []
        in_ch = width
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [PreActBlock(in_ch if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = w
        self.stage1, self.stage2, self.stage3 = stages
        self.bn = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(x))
        out = self.stage3(self.stage2(self.stage1(out)))
        out = F.relu(self.bn(out))
        return self.fc(out.mean(dim=(2, 3)))
