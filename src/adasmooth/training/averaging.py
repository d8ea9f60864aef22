"""Exponential moving average of a model's weights (the "EMA" most RobustBench entries evaluate)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """Keeps ``avg ← d·avg + (1 − d)·w`` of every floating-point parameter and buffer of ``model``
    (BatchNorm statistics included); integer buffers are copied. The decay warms up as
    ``d_t = min(decay, (1 + t) / (10 + t))`` so that early, random weights fade quickly.

    Parameters
    ----------
    model : the model being trained; ``self.model`` is a frozen copy holding the average.
    decay : in (0, 1), e.g. 0.998 (a horizon of about 500 steps).
    """

    def __init__(self, model: nn.Module, *, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for key, avg in self.model.state_dict().items():
            new = current[key].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(new.to(avg.dtype), alpha=1 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], *, updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
