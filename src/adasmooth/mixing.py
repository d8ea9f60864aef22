"""The fixed-α mixed classifier: mix the two base models' output probabilities, return their log.

    f_α(x) = log( (1-α)·softmax(s_g·g(x)) + α·softmax(s_h·h(x)) )

α = 0 is the standard model ``g``, α = 1 the robust model ``h`` (Bai et al., arXiv 2301.12554).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .transforms import HardOneHot, MixedNUTSMap, describe_map
from .validation import check_alpha

HARD_VOTE_VALUE = 100.0  # logit of the standard model's one-hot vote: softmax gives one-hot in float32


def mix_log_probs(
    standard_logits: torch.Tensor,
    robust_logits: torch.Tensor,
    alpha: float | torch.Tensor,
    *,
    standard_scale: float = 1.0,
    robust_scale: float = 1.0,
) -> torch.Tensor:
    """Log of the α-mixture of two softmaxes, computed in log space.

    ``alpha`` is a float, a per-example tensor of shape (N,), or any tensor broadcastable to the
    leading dimensions of the logits (e.g. shape (A, 1, 1) against logits (N, K) gives (A, N, K), one
    mixture per α). α = 0 and α = 1 return exactly the scaled base models' log-softmax.
    """
    log_g = torch.log_softmax(standard_scale * standard_logits, dim=-1)
    log_h = torch.log_softmax(robust_scale * robust_logits, dim=-1)
    if not torch.is_tensor(alpha):
        if alpha == 0.0:
            return log_g
        if alpha == 1.0:
            return log_h
        return torch.logaddexp(log_g + math.log1p(-alpha), log_h + math.log(alpha))
    a = alpha.to(log_g.dtype)
    if a.dim() == 1 and a.shape[0] == log_g.shape[0]:
        a = a[:, None]
    # Where a is exactly 0 or 1 select the base model directly. The mixed branch must not even be
    # evaluated at those points: its log(0) has an infinite derivative, and 0·inf in the backward pass
    # would turn the input gradient into NaN (silently breaking any attack on an α that saturates).
    at_end = (a == 0) | (a == 1)
    a_in = torch.where(at_end, torch.full_like(a, 0.5), a)
    mixed = torch.logaddexp(log_g + torch.log1p(-a_in), log_h + torch.log(a_in))
    mixed = torch.where(a == 0, log_g.expand_as(mixed), mixed)
    return torch.where(a == 1, log_h.expand_as(mixed), mixed)


class MixedClassifier(nn.Module):
    """Fixed-α mixture of a standard and a robust classifier, usable wherever logits are expected.

    Parameters
    ----------
    standard, robust : modules mapping images in [0, 1] to logits over the same classes.
    alpha : weight of the robust model, a float in [0, 1] or a per-example tensor.
    standard_scale, robust_scale : logit scales (inverse temperatures) applied before each softmax.
    standard_map, robust_map : optional logit maps (:mod:`adasmooth.transforms`, e.g. MixedNUTS' map on the
        robust side) applied to each model's logits before its scale.

    ``forward(x)`` returns log-probabilities (N, K): normalised, so ``exp`` sums to one per row.
    """

    def __init__(self, standard: nn.Module, robust: nn.Module, *, alpha: float | torch.Tensor,
                 standard_scale: float = 1.0, robust_scale: float = 1.0, standard_map: nn.Module | None = None,
                 robust_map: nn.Module | None = None):
        super().__init__()
        check_alpha(alpha)
        if standard_scale <= 0 or robust_scale <= 0:
            raise ValueError(f"logit scales must be > 0, got {standard_scale}, {robust_scale}")
        for name, m in (("standard", standard), ("robust", robust)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        n_g, n_h = num_classes_of(standard), num_classes_of(robust)
        if n_g is not None and n_h is not None and n_g != n_h:
            raise ValueError(f"base models disagree on the number of classes: standard {n_g}, robust {n_h}")
        self.standard = standard
        self.robust = robust
        self.alpha = alpha
        self.standard_scale = float(standard_scale)
        self.robust_scale = float(robust_scale)
        self.standard_map, self.robust_map = standard_map, robust_map

    def base_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both base models' logits (after their maps), one forward pass each: reuse them for many α via
        :func:`mix_log_probs`."""
        g, h = self.standard(x), self.robust(x)
        if g.shape != h.shape:
            raise ValueError(f"base models returned logits of shapes {tuple(g.shape)} and {tuple(h.shape)}")
        return apply_maps(g, h, self.standard_map, self.robust_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, h = self.base_logits(x)
        return mix_log_probs(g, h, self.alpha, standard_scale=self.standard_scale, robust_scale=self.robust_scale)

    def describe(self) -> dict:
        alpha = self.alpha if not torch.is_tensor(self.alpha) else "per-example"
        out = {"type": "MixedClassifier", "alpha": alpha, "standard_scale": self.standard_scale,
               "robust_scale": self.robust_scale}
        if self.standard_map is not None or self.robust_map is not None:
            out.update(standard_map=describe_map(self.standard_map), robust_map=describe_map(self.robust_map))
        return out

    def extra_repr(self) -> str:
        a = self.alpha if not torch.is_tensor(self.alpha) else "tensor"
        return f"alpha={a}, standard_scale={self.standard_scale}, robust_scale={self.robust_scale}"


def nonlinear_mixture(standard: nn.Module, robust: nn.Module, nonlinear_cfg, *, alpha: float | None = None) -> MixedClassifier:
    """The MixedNUTS-style mixture of a calibrated ``nonlinear`` config section (see ``adasmooth calibrate``):
    the robust logits go through the calibrated map, then one α (the calibrated one unless given). With
    ``standard_map: hard-one-hot`` the standard model votes one-hot, as MixedNUTS' tuned rows do (a softmax
    of ``HARD_VOTE_VALUE``·one-hot equals one-hot in float32; attacks take its smooth surrogate's gradient)."""

    nc = nonlinear_cfg
    if None in (nc.scale, nc.shift, nc.power, nc.alpha):
        raise ValueError("the config's nonlinear section is not calibrated (scale, shift, power, alpha are null); "
                         "run `adasmooth calibrate --write-config FILE` and pass --config FILE")
    rmap = MixedNUTSMap(scale=nc.scale, shift=nc.shift, power=nc.power, k=nc.k)
    smap = HardOneHot(value=HARD_VOTE_VALUE) if getattr(nc, "standard_map", "identity") == "hard-one-hot" else None
    return MixedClassifier(standard, robust, alpha=nc.alpha if alpha is None else alpha, robust_map=rmap,
                           standard_map=smap)


def apply_maps(g: torch.Tensor, h: torch.Tensor, standard_map: nn.Module | None,
               robust_map: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply optional logit maps to the standard and robust logits."""
    return (g if standard_map is None else standard_map(g)), (h if robust_map is None else robust_map(h))


def num_classes_of(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None
