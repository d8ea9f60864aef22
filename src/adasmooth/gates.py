"""Gate architectures: networks that read both base models' tapped features and score each input.

``MixingNetwork`` is this package's gate (any tapped widths, a projection per depth, a small pre-activation
ResNet head). ``PaperMixingNetwork`` is the architecture of the paper's released mixing networks (its
MixingNet V3 / V4, arXiv 2301.12554), in their parameter layout, so the released checkpoints load as they are.
Both return one raw score γ_raw per example; :class:`adasmooth.mixer.AdaptiveMixedClassifier` turns it into α.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureTap


class _PreActBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(ch), nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(ch), nn.Conv2d(ch, ch, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(out)))


class _DownBlock(nn.Module):
    """A pre-activation block that halves the resolution and doubles the channels (learned downsampling)."""
    def __init__(self, ch: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(ch), nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(2 * ch), nn.Conv2d(2 * ch, 2 * ch, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(ch, 2 * ch, 1, stride=2, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        return self.shortcut(out) + self.conv2(F.relu(self.bn2(self.conv1(out))))


class MixingNetwork(nn.Module):
    """The paper's mixer: per depth, concatenate both models' features and project them with a 1x1
    convolution; bring every depth to the spatial size of the deepest one; run a pre-activation ResNet
    head (``blocks`` blocks, then ``stages`` learned stride-2 stages that double the channels); pool to one
    scalar γ_raw per example.

    Parameters
    ----------
    depth_channels : channels per depth, each the sum over both models (see :meth:`from_models`).
    width : channels of the head (doubled by each stage).
    blocks : pre-activation blocks before the stages.
    stages : learned stride-2 stages (the paper's gate for two ResNet-18s has three).
    """

    def __init__(self, depth_channels: Sequence[int], *, width: int = 32, blocks: int = 2, stages: int = 0):
        super().__init__()
        if not depth_channels:
            raise ValueError("MixingNetwork needs at least one feature depth")
        if width < 1 or blocks < 0 or stages < 0:
            raise ValueError(f"the gate needs width >= 1, blocks >= 0 and stages >= 0, got {width}, {blocks}, {stages}")
        self.depth_channels = tuple(int(c) for c in depth_channels)
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c in self.depth_channels)
        self.head = nn.Sequential(*[_PreActBlock(width) for _ in range(blocks)],
                                  *[_DownBlock(width * 2**i) for i in range(stages)])
        self.blocks, self.stages = blocks, stages
        self.bn = nn.BatchNorm2d(width * 2**stages)
        self.fc = nn.Linear(width * 2**stages, 1)

    def config(self) -> dict:
        """What :meth:`from_config` needs to rebuild this gate (weights aside)."""
        return {"type": "MixingNetwork", "depth_channels": list(self.depth_channels),
                "width": self.project[0].out_channels, "blocks": self.blocks, "stages": self.stages}

    @classmethod
    def from_config(cls, config: dict) -> MixingNetwork:
        if config.get("type") != "MixingNetwork":
            raise ValueError(f"not a MixingNetwork gate config: type={config.get('type')!r}")
        return cls(config["depth_channels"], width=config["width"], blocks=config["blocks"],
                   stages=config.get("stages", 0))

    @classmethod
    def from_models(cls, standard: nn.Module, robust: nn.Module, *, standard_layers: Sequence[str],
                    robust_layers: Sequence[str], input_shape: Sequence[int], **kwargs) -> MixingNetwork:
        """Infer the channel widths from a dry run of both models on zeros of ``input_shape`` (C, H, W)."""
        if len(standard_layers) != len(robust_layers):
            raise ValueError("tap the same number of depths in both models")
        feats = []
        for model, layers in ((standard, standard_layers), (robust, robust_layers)):
            with FeatureTap(model, layers) as tap, torch.no_grad():
                was_training = model.training
                model.eval()
                p = next(model.parameters(), None)
                model(torch.zeros(2, *input_shape, device=p.device if p is not None else "cpu"))
                model.train(was_training)
                feats.append([f.shape for f in tap.features()])
        return cls([fs[1] + fr[1] for fs, fr in zip(*feats)], **kwargs)

    def forward(self, standard_features: list[torch.Tensor], robust_features: list[torch.Tensor]) -> torch.Tensor:
        if len(standard_features) != len(self.project) or len(robust_features) != len(self.project):
            raise ValueError(f"expected {len(self.project)} feature depths from each model")
        target = min(min(f.shape[-2:]) for f in standard_features + robust_features)
        out = 0
        for proj, fs, fr in zip(self.project, standard_features, robust_features):
            out = out + proj(torch.cat([_pool_to(fs, target), _pool_to(fr, target)], dim=1))
        out = F.relu(self.bn(self.head(out)))
        return self.fc(out.mean(dim=(2, 3))).squeeze(1)


def _pool_to(f: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool ``f`` to ``size`` x ``size``. Where the sides are multiples of ``size`` this is a plain
    ``avg_pool2d`` (the same values and gradients as the adaptive pooling, several times faster on CPU)."""
    h, w = f.shape[-2:]
    if h == size and w == size:
        return f
    if h % size == 0 and w % size == 0 and h // size == w // size:
        return F.avg_pool2d(f, h // size)
    return F.adaptive_avg_pool2d(f, size)


# Channels of the first two tapped depths and of the gate's later stages, per base model, keyed by the
# channels of the first tapped depth (the released code's table): 64 for ResNet-18, 160 for WRN-28-10,
# 256 for WRN-70-16, 512 for BiT ResNet-152x2.
PAPER_PLANES = {64: (64, 128, 256, 512), 160: (160, 320, 512, 768), 256: (256, 256, 384, 512),
                512: (512, 256, 384, 512)}


class _PaperBlock(nn.Module):
    """The released gate's pre-activation block (keys ``bn1, conv1, bn2, conv2, shortcut.0``). As released,
    the shortcut always takes the activated input; where it has no convolution it is the identity on it."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = nn.Sequential(*([nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)]
                                        if needs_projection else []))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out)
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + skip


class PaperMixingNetwork(nn.Module):
    """The released mixing network (MixingNet V3 / V4), parameter for parameter.

    Two depths are tapped in each base model. The first depths of both are concatenated and pass a stride-2
    stage (``layers.0``); the second depths, concatenated, are added to its output (version 3 adds them as
    they are; version 4 projects them with the 1x1 convolution ``conv1x1``). Two more stride-2 stages, global
    average pooling and a linear map without bias give γ_raw. Each stage has two :class:`_PaperBlock`.

    Parameters
    ----------
    in_planes : channels of the first tapped depth of (standard, robust), each a key of ``PAPER_PLANES``;
        the released CIFAR gates use ``(512, 256)`` (BiT ResNet-152x2 ``body.block1`` and WRN-70-16 ``layer.0``).
    version : 3 or 4.
    """

    def __init__(self, in_planes: Sequence[int] = (512, 256), *, version: int = 4):
        super().__init__()
        unknown = [p for p in in_planes if p not in PAPER_PLANES]
        if len(in_planes) != 2 or unknown:
            raise ValueError(f"in_planes must be two of {sorted(PAPER_PLANES)} (standard, robust), got {list(in_planes)}")
        if version not in (3, 4):
            raise ValueError(f"version must be 3 or 4, got {version}")
        self.in_planes, self.version = tuple(int(p) for p in in_planes), int(version)
        tables = [PAPER_PLANES[p] for p in self.in_planes]
        self.planes = tuple(sum(t[i] for t in tables) for i in range(4))
        width, stages = self.planes[0], []
        for planes in self.planes[1:]:
            stages.append(nn.Sequential(_PaperBlock(width, planes, 2), _PaperBlock(planes, planes, 1)))
            width = planes
        self.layers = nn.ModuleList(stages)
        if self.version == 4:
            self.conv1x1 = nn.Conv2d(2 * self.planes[0], self.planes[1], 1, bias=False)
        self.linear = nn.Linear(self.planes[-1], 1, bias=False)

    def config(self) -> dict:
        return {"type": "PaperMixingNetwork", "in_planes": list(self.in_planes), "version": self.version}

    @classmethod
    def from_config(cls, config: dict) -> PaperMixingNetwork:
        if config.get("type") != "PaperMixingNetwork":
            raise ValueError(f"not a PaperMixingNetwork gate config: type={config.get('type')!r}")
        return cls(config["in_planes"], version=config.get("version", 4))

    def forward(self, standard_features: list[torch.Tensor], robust_features: list[torch.Tensor]) -> torch.Tensor:
        if len(standard_features) != 2 or len(robust_features) != 2:
            raise ValueError("PaperMixingNetwork reads two tapped depths of each base model, "
                             f"got {len(standard_features)} and {len(robust_features)}")
        first = torch.cat([standard_features[0], robust_features[0]], dim=1)
        second = torch.cat([standard_features[1], robust_features[1]], dim=1)
        want_second = 2 * self.planes[0] if self.version == 4 else self.planes[1]
        if first.shape[1] != self.planes[0] or second.shape[1] != want_second:
            raise ValueError(f"the tapped features have {first.shape[1]} and {second.shape[1]} channels; this gate "
                             f"(in_planes {list(self.in_planes)}, version {self.version}) reads {self.planes[0]} "
                             f"and {want_second}: check the tapped layers")
        out = self.layers[0](first) + (self.conv1x1(second) if self.version == 4 else second)
        for stage in self.layers[1:]:
            out = stage(out)
        return self.linear(out.mean(dim=(2, 3))).squeeze(1)


GATE_TYPES = {"MixingNetwork": MixingNetwork, "PaperMixingNetwork": PaperMixingNetwork}


def gate_from_config(config: dict) -> nn.Module:
    """Rebuild a gate (weights aside) from its ``config()``."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in GATE_TYPES:
        raise ValueError(f"unknown gate type {kind!r}; known: {', '.join(GATE_TYPES)}")
    return GATE_TYPES[kind].from_config(config)
