"""Batched predictions and accuracies: data stays on the CPU, batches move to the device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def batched_logits(
    model: nn.Module | Callable,
    x: torch.Tensor,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Model outputs for all of ``x`` (on the CPU), computed batch by batch on ``device``."""
    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        outs.append(model(x[i : i + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def correct_mask(model, x, y, **kwargs) -> torch.Tensor:
    """Boolean tensor: which examples ``model`` classifies correctly."""
    return batched_logits(model, x, **kwargs).argmax(1) == y


def accuracy(model, x, y, **kwargs) -> float:
    return float(correct_mask(model, x, y, **kwargs).float().mean()) if len(y) else float("nan")


def attack_batched(
    attack: Callable[..., torch.Tensor],
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "attack",
    **attack_options,
) -> torch.Tensor:
    """Run a functional attack batch by batch on ``device``; returns adversarial images on the CPU."""
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out.append(attack(model, xb, yb, **attack_options).cpu())
    return torch.cat(out) if out else x.clone()
