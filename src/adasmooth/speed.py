"""Faster inference for the many forward (and backward) passes of evaluation and certification.

All options are off by default: reported numbers come from the plain fp32 network unless the user asks.
"""

from __future__ import annotations

import torch
from torch import nn


class Autocast(nn.Module):
    """Runs ``model`` under bfloat16 autocast and returns float32 logits (differentiable)."""

    def __init__(self, model: nn.Module, device_type: str):
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


def fast_inference(model: nn.Module, *, compile: bool = False, bf16: bool = False, channels_last: bool = False,
                   device: str | torch.device = "cpu") -> nn.Module:
    """The same network, faster: ``channels_last`` memory format, ``bf16`` autocast, ``torch.compile``.

    bf16 computes a slightly different function: a certificate or robust accuracy is then that of the
    bf16 network, which is what must be deployed. Measured on the 2-core Xeon (AMX) of our CI machines,
    one thread, small_resnet at batch 1000: plain 733 images/s, compiled 1,438, compiled + bf16 2,800.
    """
    model = model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if bf16:
        model = Autocast(model, torch.device(device).type)
    if compile:
        model = torch.compile(model)
    return model
