"""Logit maps: reshape a base model's logits before the mixture's softmax (MixedNUTS, Bai, Zhou, Patel,
Sojoudi, arXiv 2402.02263).

A robust model is more confident where it is right than where it is wrong; a map that grows its large
margins more than its small ones lets a fixed α keep the robust answer on attacked inputs it still gets
right while the standard model takes over where the robust model is unsure. Maps are small
``nn.Module``\\ s from logits (N, K) to logits (N, K), composable with :class:`Compose`, and plug into
:class:`~adasmooth.MixedClassifier` and :class:`~adasmooth.AdaptiveMixedClassifier` for either base
model (``standard_map=``, ``robust_map=``).

Non-smooth maps (:class:`HardOneHot`, steep powers) hide gradients from an attacker; use
:func:`straight_through` (value of the true map, gradient of a smooth surrogate) when attacking them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Identity(nn.Module):
    """The logits as they are."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def describe(self) -> dict:
        return {"type": "identity"}


class Temperature(nn.Module):
    """``s·z``: an inverse temperature (``s > 0`` keeps the argmax)."""

    def __init__(self, scale: float):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"the scale must be > 0, got {scale}")
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * z

    def describe(self) -> dict:
        return {"type": "temperature", "scale": self.scale}


def topk_layer_norm(z: torch.Tensor, k: int | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Centre and scale every logit of a row by the mean and (unbiased) standard deviation of that row's
    ``k`` largest logits (all of them when ``k`` is None or >= K). Monotone per row: keeps the order."""
    if k is not None and k < 2:
        raise ValueError(f"k must be >= 2 (a standard deviation needs two logits), got {k}")
    top = z if k is None or k >= z.shape[-1] else z.topk(k, dim=-1).values
    mean = top.mean(-1, keepdim=True)
    var = top.var(-1, keepdim=True)
    return (z - mean) / (var + eps).sqrt()


class TopKLayerNorm(nn.Module):
    """:func:`topk_layer_norm` as a module."""

    def __init__(self, k: int | None = None):
        super().__init__()
        if k is not None and k < 2:
            raise ValueError(f"k must be >= 2, got {k}")
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return topk_layer_norm(z, self.k)

    def describe(self) -> dict:
        return {"type": "topk-layer-norm", "k": self.k}


class MixedNUTSMap(nn.Module):
    """``s·sign(u)·|u|^p`` with ``u = GELU(LN_topk(z) + c)`` (MixedNUTS' nonlinear logit map).

    ``LN_topk`` normalises each row by its top-``k`` logits, so the map does not depend on the logits'
    overall scale; the shift ``c`` and the power ``p`` bend large margins up relative to small ones, and
    ``s`` sets the final temperature. GELU is increasing above about -0.75, so the argmax is kept whenever
    the normalised top logit plus ``c`` lies above that (always for ``c >= 0``).
    """

    def __init__(self, *, scale: float, shift: float, power: float, k: int | None = 4):
        super().__init__()
        if scale <= 0 or power <= 0:
            raise ValueError(f"scale and power must be > 0, got {scale}, {power}")
        if k is not None and k < 2:
            raise ValueError(f"k must be >= 2, got {k}")
        self.scale, self.shift, self.power, self.k = float(scale), float(shift), float(power), k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = F.gelu(topk_layer_norm(z, self.k) + self.shift)
        # |u|^p has an infinite slope at 0 for p < 1; a tiny floor keeps the gradient finite
        return self.scale * torch.sign(u) * u.abs().clamp_min(1e-12).pow(self.power)

    def surrogate(self, z: torch.Tensor) -> torch.Tensor:
        """A smooth stand-in for attacks: ``s·(LN_topk(z) + c)``, the map without GELU and power. GELU is
        flat for low logits (a wrong class far below the top gets almost no gradient) and a steep power
        flattens small ones; the linear stand-in keeps the order and passes every logit's gradient."""
        return self.scale * (topk_layer_norm(z, self.k) + self.shift)

    def describe(self) -> dict:
        return {"type": "mixednuts", "scale": self.scale, "shift": self.shift, "power": self.power, "k": self.k}


class HardOneHot(nn.Module):
    """``value·onehot(argmax z)``: the standard model's prediction as a hard vote (no gradient; attack it
    through :func:`straight_through` with a softmax surrogate, see :meth:`surrogate`)."""

    def __init__(self, value: float = 10.0, surrogate_temperature: float = 1.0):
        super().__init__()
        if value <= 0 or surrogate_temperature <= 0:
            raise ValueError(f"value and surrogate_temperature must be > 0, got {value}, {surrogate_temperature}")
        self.value, self.surrogate_temperature = float(value), float(surrogate_temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.value * F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)

    def surrogate(self, z: torch.Tensor) -> torch.Tensor:
        """A smooth stand-in with the same range: ``value·softmax(z / T)``."""
        return self.value * torch.softmax(z / self.surrogate_temperature, dim=-1)

    def describe(self) -> dict:
        return {"type": "hard-one-hot", "value": self.value, "surrogate_temperature": self.surrogate_temperature}


class Compose(nn.Module):
    """Apply maps left to right."""

    def __init__(self, *maps: nn.Module):
        super().__init__()
        self.maps = nn.ModuleList(maps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for m in self.maps:
            z = m(z)
        return z

    def describe(self) -> dict:
        return {"type": "compose", "maps": [describe_map(m) for m in self.maps]}


def straight_through(true: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """The value of ``true`` with the gradient of ``surrogate``: ``true.detach() + surrogate - surrogate.detach()``."""
    return true.detach() + surrogate - surrogate.detach()


def describe_map(m: nn.Module | None) -> dict:
    """A JSON-ready description of a logit map (``identity`` for None)."""
    if m is None:
        return {"type": "identity"}
    if hasattr(m, "describe"):
        return m.describe()
    return {"type": type(m).__name__}


def map_from_description(d: dict | None) -> nn.Module | None:
    """Rebuild a map from :func:`describe_map`'s output (None or identity give None)."""
    if d is None or d["type"] == "identity":
        return None
    kind = d["type"]
    if kind == "temperature":
        return Temperature(d["scale"])
    if kind == "topk-layer-norm":
        return TopKLayerNorm(d["k"])
    if kind == "mixednuts":
        return MixedNUTSMap(scale=d["scale"], shift=d["shift"], power=d["power"], k=d["k"])
    if kind == "hard-one-hot":
        return HardOneHot(d["value"], d["surrogate_temperature"])
    if kind == "compose":
        return Compose(*[m for m in (map_from_description(x) for x in d["maps"]) if m is not None])
    raise ValueError(f"cannot rebuild a logit map of type {kind!r} (custom maps are not saved; pass them yourself)")


__all__ = ["Compose", "HardOneHot", "Identity", "MixedNUTSMap", "Temperature", "TopKLayerNorm", "describe_map",
           "map_from_description", "straight_through", "topk_layer_norm"]
