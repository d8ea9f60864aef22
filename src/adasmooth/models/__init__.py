"""Architectures for the embedded default, and a registry that builds them by name.

A checkpoint's JSON sidecar stores ``{"architecture": name, "arch_args": {...}}``; :func:`build` turns
that back into a module without unpickling anything.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .small_resnet import Normalize, SmallResNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_resnet": SmallResNet,
}


def build(name: str, **arch_args) -> nn.Module:
    """Build a registered architecture by name with keyword arguments."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[name](**arch_args)
    except TypeError as exc:
        raise ValueError(f"bad arguments for architecture {name!r}: {exc}") from None


__all__ = ["ARCHITECTURES", "Normalize", "SmallResNet", "build"]
