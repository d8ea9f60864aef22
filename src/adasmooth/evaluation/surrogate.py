"""Straight-through surrogates for honest attacks on mixtures with non-smooth logit maps.

A hard one-hot of the standard model's prediction (or a very steep power) gives an attacker zero or
useless gradients, which makes a mixture look more robust than it is. :class:`SurrogateGuided` presents
the true model's *values* with the *gradients* of a smooth surrogate (each map's ``surrogate`` method
where it has one), so an unmodified attack such as AutoAttack follows useful directions while every
prediction it sees, and every score it keeps, is the true model's. :class:`SurrogateAttack` runs any
harness attack through it and re-scores the result on the true model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..mixing import MixedClassifier, mix_log_probs
from ..transforms import straight_through
from .accuracy import correct_mask
from .attack_specs import AttackOutcome


def _smooth(m: nn.Module | None):
    if m is None:
        return None
    return getattr(m, "surrogate", m)


def _unwrap(model: nn.Module) -> nn.Module:
    """The mixture under speed wrappers (``torch.compile``, bf16 autocast): the surrogate needs its maps;
    the attack's result is still scored on the wrapped model."""
    while not hasattr(model, "standard_map") and (hasattr(model, "_orig_mod") or hasattr(model, "model")):
        model = getattr(model, "_orig_mod", None) or model.model
    return model


class _StraightThroughMap(nn.Module):
    """A logit map's value with its surrogate's gradient."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return straight_through(self.m(z), _smooth(self.m)(z))


def has_logit_maps(model: nn.Module) -> bool:
    """Whether ``model`` (a mixed or adaptive classifier) puts a logit map on either base model."""
    return getattr(model, "standard_map", None) is not None or getattr(model, "robust_map", None) is not None


class SurrogateGuided(nn.Module):
    """``true(x)`` forward, gradient of a smooth surrogate.

    For a :class:`~adasmooth.MixedClassifier` the whole surrogate mixture (maps replaced by their smooth
    surrogates) gives the gradient. For any other model with ``standard_map`` / ``robust_map`` attributes
    (an :class:`~adasmooth.AdaptiveMixedClassifier`), each map is made straight-through for the duration of
    the call (its value, its surrogate's gradient), so the gate and the base models still run once.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, MixedClassifier) and not (hasattr(model, "standard_map") and hasattr(model, "robust_map")):
            raise TypeError(f"SurrogateGuided wraps a model with standard_map / robust_map attributes "
                            f"(MixedClassifier, AdaptiveMixedClassifier), got {type(model).__name__}")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not isinstance(m, MixedClassifier):
            return self._straight_through_maps(x)
        g, h = m.standard(x), m.robust(x)  # one forward pass per base model serves both paths
        sm, rm = _smooth(m.standard_map), _smooth(m.robust_map)
        true_g = g if m.standard_map is None else m.standard_map(g)
        true_h = h if m.robust_map is None else m.robust_map(h)
        true = mix_log_probs(true_g, true_h, m.alpha, standard_scale=m.standard_scale, robust_scale=m.robust_scale)
        sur = mix_log_probs(g if sm is None else sm(g), h if rm is None else rm(h), m.alpha,
                            standard_scale=m.standard_scale, robust_scale=m.robust_scale)
        return straight_through(true, sur)

    def _straight_through_maps(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        saved = m.standard_map, m.robust_map
        try:
            m.standard_map = None if saved[0] is None else _StraightThroughMap(saved[0])
            m.robust_map = None if saved[1] is None else _StraightThroughMap(saved[1])
            return m(x)
        finally:
            m.standard_map, m.robust_map = saved


@dataclass
class SurrogateAttack:
    """Run ``inner`` (any harness attack, e.g. :class:`AutoAttackSpec`) on :class:`SurrogateGuided` of the
    evaluated model; robustness is re-scored on the true model."""

    inner: object

    @property
    def name(self) -> str:
        return f"{self.inner.name}-surrogate"

    def settings(self) -> dict:
        return {**self.inner.settings(), "name": self.name, "guided_by": "straight-through surrogate"}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        out = self.inner.robust_mask(SurrogateGuided(_unwrap(model)), x, y, eps=eps, norm=norm, device=device,
                                     batch_size=batch_size, progress=progress)
        robust = correct_mask(model, out.x_adv, y, device=device, batch_size=batch_size)
        return AttackOutcome(robust=robust, x_adv=out.x_adv, extra=out.extra)
