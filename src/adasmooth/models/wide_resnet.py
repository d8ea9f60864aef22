"""WideResNet (Zagoruyko and Komodakis 2016) in the layout of DeepMind's robust checkpoints.

Parameter names follow the public PyTorch ports of DeepMind's adversarially trained WRN-28-10 / WRN-70-16
(the robust bases of the paper, e.g. RobustBench's ``Wang2023Better_WRN-70-16``), so their state dicts load
without renaming: ``mean``/``std`` buffers, ``init_conv``, ``layer.<group>.block.<i>.{batchnorm_0, conv_0,
batchnorm_1, conv_1, shortcut}``, ``batchnorm``, ``logits``. Each block is pre-activation; a block that
changes width applies its shortcut to the activated input, and strided convolutions pad as TensorFlow's
``SAME`` does (one pixel right and bottom). The three block groups ``layer.0``, ``layer.1``, ``layer.2``
are the taps of an early and a middle stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}


class WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_ch)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_ch)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if in_ch != out_ch else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        out = self.conv_0(F.pad(act, pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        skip = self.shortcut(act) if self.shortcut is not None else x
        return skip + out


class BlockGroup(nn.Module):
    def __init__(self, n_blocks: int, in_ch: int, out_ch: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*[
            WideBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, activation) for i in range(n_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` taking images in [0, 1] (normalisation inside, as the checkpoints expect).

    Parameters
    ----------
    depth : 6·n + 4 (28, 34, 70, ...); n blocks per group.
    width : widening factor (10, 16, ...).
    num_classes, in_channels : output classes and input channels.
    activation : "relu" or "swish" (DeepMind's WRN-70-16 checkpoints use swish).
    mean, std : per-channel normalisation; default CIFAR-10's.
    """

    def __init__(self, depth: int = 28, width: int = 10, *, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "relu", mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(in_channels, 1, 1))
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, padding=1, bias=False)
        self.layer = nn.Sequential(BlockGroup(n, ch[0], ch[1], 1, act), BlockGroup(n, ch[1], ch[2], 2, act),
                                   BlockGroup(n, ch[2], ch[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
