"""BiT (Big Transfer, Kolesnikov et al. 2020) pre-activation ResNet-v2 in Google's PyTorch key layout, and
converters between the layouts its checkpoints come in.

The paper's standard CIFAR bases are BiT-M ResNet-152x2 models fine-tuned at 128x128 and released in
Google's ``big_transfer`` PyTorch layout (``root.conv``, ``body.block<i>.unit<jj>.{gn1, conv1, gn2, conv2,
gn3, conv3, downsample}``, ``head.{gn, conv}``), or as TensorFlow ``.npz`` files. :class:`BiTResNetV2`
loads both as they are (``.npz`` names are converted on reading); :func:`bit_to_timm` renames a state dict
to timm's ``resnetv2_*_bit`` layout for users who prefer timm. ``body.block1`` and ``body.block2`` are the
taps of the paper's released mixing networks.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class StdConv2d(nn.Conv2d):
    """A convolution with weight standardisation: each filter is shifted and scaled to zero mean and unit
    variance before use (``eps`` 1e-10, as the released models were trained)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """GroupNorm → ReLU → 1x1 → GN → ReLU → 3x3 (the stride) → GN → ReLU → 1x1; the projection shortcut
    (where the shape changes) takes the activated input."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.gn1, self.conv1 = nn.GroupNorm(32, cin), StdConv2d(cin, cmid, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, cmid), StdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(x))
        residual = self.downsample(out) if hasattr(self, "downsample") else x
        out = self.conv2(F.relu(self.gn2(self.conv1(out))))
        return self.conv3(F.relu(self.gn3(out))) + residual


class BiTResNetV2(nn.Module):
    """BiT ResNet-v2 (``block_units`` (3, 8, 36, 3) and ``width_factor`` 2 make BiT-M-R152x2).

    Images in [0, 1] are normalised inside (``mean``/``std``, 0.5 each as the released CIFAR models expect;
    not part of the state dict). ``stem_width`` (64 in every released model) shrinks the network for tests;
    every width stays a multiple of GroupNorm's 32 groups.
    """

    def __init__(self, block_units: Sequence[int] = (3, 8, 36, 3), width_factor: int = 2, num_classes: int = 100,
                 *, stem_width: int = 64, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        if len(block_units) != 4 or min(block_units) < 1:
            raise ValueError(f"block_units must be four counts >= 1, got {list(block_units)}")
        w = int(stem_width) * int(width_factor)
        if w < 32 or w % 32:
            raise ValueError(f"stem_width x width_factor must be a multiple of 32, got {w}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(len(mean), w, 7, stride=2, padding=3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", nn.MaxPool2d(3, stride=2, padding=0)),
        ]))
        blocks, cin = [], w
        for i, units in enumerate(block_units):
            cmid, cout = w * 2**i, 4 * w * 2**i
            stage = [(f"unit{j + 1:02d}", PreActBottleneck(cin if j == 0 else cout, cout, cmid,
                                                           stride=2 if (i > 0 and j == 0) else 1))
                     for j in range(units)]
            blocks.append((f"block{i + 1}", nn.Sequential(OrderedDict(stage))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))
        self.head = nn.Sequential(OrderedDict([
            ("gn", nn.GroupNorm(32, cin)), ("relu", nn.ReLU()), ("avg", nn.AdaptiveAvgPool2d(1)),
            ("conv", nn.Conv2d(cin, num_classes, 1, bias=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / (self.std + 1e-8)
        return self.head(self.body(self.root(x)))[..., 0, 0]


_TF_UNIT = re.compile(r"^(?:resnet/)?block(\d+)/unit(\d+)/([abc])/(?:(proj)/)?(standardized_conv2d/kernel|group_norm/gamma|group_norm/beta)$")
_TF_TOP = {"root_block/standardized_conv2d/kernel": "root.conv.weight", "group_norm/gamma": "head.gn.weight",
           "group_norm/beta": "head.gn.bias", "head/conv2d/kernel": "head.conv.weight", "head/conv2d/bias": "head.conv.bias"}


def is_tensorflow_bit(state: dict) -> bool:
    return any(k.endswith("standardized_conv2d/kernel") for k in state)


def bit_from_tensorflow(arrays: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Google's TensorFlow BiT names and layouts (``resnet/block1/unit01/a/standardized_conv2d/kernel``,
    HWIO kernels) to :class:`BiTResNetV2`'s (``body.block1.unit01.conv1.weight``, OIHW)."""
    out, unknown = {}, []
    for name, value in arrays.items():
        t = torch.as_tensor(np.asarray(value))
        t = t.permute(3, 2, 0, 1).contiguous() if t.ndim == 4 else t.reshape(-1)
        short = name.removeprefix("resnet/")
        m = _TF_UNIT.match(name)
        if short in _TF_TOP:
            out[_TF_TOP[short]] = t
        elif m:
            block, unit, part, proj, leaf = m.groups()
            stem = f"body.block{int(block)}.unit{int(unit):02d}."
            if proj:
                out[stem + "downsample.weight"] = t
            else:
                idx = "abc".index(part) + 1
                out[stem + (f"conv{idx}.weight" if leaf.endswith("kernel") else
                            f"gn{idx}.{'weight' if leaf.endswith('gamma') else 'bias'}")] = t
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{len(unknown)} TensorFlow BiT names not understood (first {unknown[:3]})")
    return out


_BIT_UNIT = re.compile(r"^body\.block(\d+)\.unit(\d+)\.(gn[123]|conv[123]|downsample)\.(weight|bias)$")
_BIT_TOP = {"root.conv.weight": "stem.conv.weight", "head.gn.weight": "norm.weight", "head.gn.bias": "norm.bias",
            "head.conv.weight": "head.fc.weight", "head.conv.bias": "head.fc.bias"}


def bit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a BiT state dict in Google's PyTorch layout (a ``module.`` prefix is dropped) to timm's
    ``resnetv2_*_bit`` layout: ``root.conv`` → ``stem.conv``, ``body.block<i>.unit<jj>`` →
    ``stages.<i-1>.blocks.<jj-1>``, ``gn<k>`` → ``norm<k>``, ``downsample`` → ``downsample.conv``, ``head.gn``
    → ``norm``, ``head.conv`` → ``head.fc``. Tensors are shared, not copied."""
    if is_tensorflow_bit(state):
        state = bit_from_tensorflow(state)
    out, unknown = {}, []
    for name, t in state.items():
        key = name.removeprefix("module.")
        m = _BIT_UNIT.match(key)
        if key in _BIT_TOP:
            out[_BIT_TOP[key]] = t
        elif m:
            block, unit, layer, leaf = m.groups()
            layer = {"gn1": "norm1", "gn2": "norm2", "gn3": "norm3", "downsample": "downsample.conv"}.get(layer, layer)
            out[f"stages.{int(block) - 1}.blocks.{int(unit) - 1}.{layer}.{leaf}"] = t
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not in BiT's layout (first {unknown[:3]}); is this a BiT checkpoint?")
    return out
