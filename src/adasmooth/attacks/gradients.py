"""Attacks need the gradient with respect to the input only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, no parameter of ``model`` asks for a gradient, so a backward pass computes the input's
    gradient alone (a trainable gate would otherwise cost a weight gradient per layer in every attack
    step); the flags are restored on exit. The input gradients are the same."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
