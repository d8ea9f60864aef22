"""Checks on user input that run before any work starts, each with a message that says what is wrong."""

from __future__ import annotations

import torch


def check_images(x: torch.Tensor, *, channels: int | None = None, name: str = "images") -> None:
    """Images must be a finite float NCHW tensor in [0, 1] (with ``channels`` channels when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be NCHW (4 dimensions), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} have {x.shape[1]} channels, the model expects {channels}")
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or Inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (normalisation happens inside the model); got [{lo:.3g}, {hi:.3g}]")


def check_labels(y: torch.Tensor, *, num_classes: int, n: int | None = None) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor, got {getattr(y, 'shape', type(y))}")
    if n is not None and len(y) != n:
        raise ValueError(f"got {len(y)} labels for {n} images")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}]")


def check_alpha(alpha) -> None:
    t = torch.as_tensor(alpha, dtype=torch.float64)
    if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"alpha must lie in [0, 1], got {alpha if t.numel() == 1 else 'values outside it'}")
