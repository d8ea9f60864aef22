"""Run a model trained at another resolution: resize the input inside the model (differentiably)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InputResize(nn.Module):
    """``model(resize(x))``: bilinear (default) resizing of images to ``size`` before ``model``.

    The paper's standard CIFAR model (BiT ResNet-152x2) was fine-tuned at 128x128; wrapped this way it
    takes 32x32 CIFAR images, and attacks on the wrapper perturb the 32x32 input, as they must. The wrapped
    model stays reachable as ``.model`` (feature taps name ``model.<layer>``).
    """

    def __init__(self, model: nn.Module, size: int | tuple[int, int], *, mode: str = "bilinear",
                 antialias: bool = False):
        super().__init__()
        self.model = model
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if mode not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"mode must be bilinear, bicubic or nearest, got {mode!r}")
        self.mode, self.antialias = mode, antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            kw = {"align_corners": False, "antialias": self.antialias} if self.mode != "nearest" else {}
            x = F.interpolate(x, size=self.size, mode=self.mode, **kw)
        return self.model(x)
