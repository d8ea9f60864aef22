"""Adaptive smoothing: a mixing network picks α per input from both base models' intermediate features.

    γ_raw = gate(features of g, features of h)         # any module with this signature
    γ     = k · BN(γ_raw) + b                           # BatchNorm without affine parameters
    α(x)  = σ(γ), confined at evaluation to [α_lo, α_hi] by α ← α_lo + (α_hi − α_lo)·α
    f(x)  = log((1 − α(x))·softmax(s_g·g(x)) + α(x)·softmax(s_h·h(x)))

Each base model runs once per call; the gate reads the features captured by forward hooks during that
same pass (Bai et al., arXiv 2301.12554, Sec. 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from .features import FeatureTap
from .gates import GATE_TYPES, MixingNetwork, PaperMixingNetwork, _pool_to, gate_from_config  # noqa: F401 (re-exported)
from .io import CheckpointError, load_tensors, save_tensors, state_dict_problem, state_fingerprint
from .mixing import apply_maps, mix_log_probs, num_classes_of
from .transforms import describe_map, map_from_description


class Gate(Protocol):
    """What the composite needs of a detector: features of both models in, one raw score per example out.

    ``standard_features`` and ``robust_features`` are lists of tensors (N, C_i, H_i, W_i) in the order the
    layers were named; the return value has shape (N,). Larger means "more likely attacked".
    """

    def __call__(self, standard_features: list[torch.Tensor], robust_features: list[torch.Tensor]) -> torch.Tensor: ...


class AdaptiveMixedClassifier(nn.Module):
    """Mixture of a standard and a robust classifier with an input-dependent weight α(x).

    ``forward(x)`` returns log-probabilities (one tensor, so AutoAttack and RobustBench take it as it is);
    ``alpha(x)`` and ``gamma(x)`` return the per-example mixing weight and its logit. Gradients flow
    through the gate, so a white-box attacker sees the whole composite.

    Parameters
    ----------
    standard, robust : base classifiers over the same classes (kept frozen: their parameters are set
        to ``requires_grad=False``).
    gate : a :class:`Gate` (e.g. :class:`MixingNetwork`).
    standard_layers, robust_layers : names of the tapped submodules, one per depth.
    gamma_scale, gamma_bias : ``k`` and ``b`` in ``γ = k·BN(γ_raw) + b``.
    gamma_clamp : in training, γ_raw is clamped to the batch mean ± ``gamma_clamp``·std before the
        BatchNorm (the paper's 0.6; None: no clamp). Evaluation never clamps.
    bn_momentum : momentum of γ's BatchNorm1d (affine=False; the paper's 0.01).
    alpha_range : ``(α_lo, α_hi)`` applied in eval mode.
    standard_scale, robust_scale : logit scales applied before each softmax.
    standard_map, robust_map : optional logit maps (:mod:`adasmooth.transforms`) applied before the scales.
    """

    def __init__(self, standard: nn.Module, robust: nn.Module, gate: nn.Module, *,
                 standard_layers: Sequence[str], robust_layers: Sequence[str], gamma_scale: float = 2.0,
                 gamma_bias: float = 0.4, alpha_range: tuple[float, float] = (0.0, 1.0),
                 standard_scale: float = 1.0, robust_scale: float = 1.0, standard_map: nn.Module | None = None,
                 robust_map: nn.Module | None = None, gamma_clamp: float | None = None, bn_momentum: float = 0.1):
        super().__init__()
        n_g, n_h = num_classes_of(standard), num_classes_of(robust)
        if n_g is not None and n_h is not None and n_g != n_h:
            raise ValueError(f"base models disagree on the number of classes: standard {n_g}, robust {n_h}")
        lo, hi = alpha_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"alpha_range must satisfy 0 <= lo <= hi <= 1, got {alpha_range}")
        self.standard, self.robust, self.gate = standard, robust, gate
        for p in list(standard.parameters()) + list(robust.parameters()):
            p.requires_grad_(False)
        if gamma_clamp is not None and not gamma_clamp > 0:
            raise ValueError(f"gamma_clamp must be > 0 or None, got {gamma_clamp}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must lie in (0, 1], got {bn_momentum}")
        # on the gate's device, so that a composite built around models already on a GPU works as built
        gate_device = next((t.device for t in (*gate.parameters(), *gate.buffers())), None)
        self.gamma_bn = nn.BatchNorm1d(1, affine=False, momentum=bn_momentum, device=gate_device)
        self.gamma_clamp = None if gamma_clamp is None else float(gamma_clamp)
        self.gamma_scale, self.gamma_bias = float(gamma_scale), float(gamma_bias)
        self.alpha_range = (float(lo), float(hi))
        self.standard_scale, self.robust_scale = float(standard_scale), float(robust_scale)
        self.standard_layers, self.robust_layers = tuple(standard_layers), tuple(robust_layers)
        self.standard_map, self.robust_map = standard_map, robust_map
        self._tap_standard = FeatureTap(standard, standard_layers)
        self._tap_robust = FeatureTap(robust, robust_layers)

    def train(self, mode: bool = True):
        """Only the gate and its BatchNorm train; the base models stay in eval mode."""
        super().train(mode)
        self.standard.eval()
        self.robust.eval()
        return self

    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(standard logits, robust logits, γ)`` from one forward pass of each base model."""
        self._tap_standard.clear()
        self._tap_robust.clear()
        g = self.standard(x)
        h = self.robust(x)
        raw = self.gate(self._tap_standard.features(), self._tap_robust.features())
        gamma = self.gamma_scale * self.gamma_bn(self.clamp_raw(raw).view(-1, 1)).view(-1) + self.gamma_bias
        return g, h, gamma

    def clamp_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """In training (batches of two or more), γ_raw clamped to the batch mean ± ``gamma_clamp``·std
        (statistics without gradient), so a few extreme scores cannot dominate the BatchNorm statistics."""
        if not self.training or self.gamma_clamp is None or raw.numel() < 2:
            return raw
        with torch.no_grad():
            mean, std = raw.mean(), raw.std()
        return torch.max(torch.min(raw, mean + self.gamma_clamp * std), mean - self.gamma_clamp * std)

    def alpha_from_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(gamma)
        if not self.training:
            lo, hi = self.alpha_range
            a = lo + (hi - lo) * a
        return a

    def gamma(self, x: torch.Tensor) -> torch.Tensor:
        return self.components(x)[2]

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha_from_gamma(self.gamma(x))

    def mix(self, standard_logits: torch.Tensor, robust_logits: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the mixture from already computed components (no extra forward pass)."""
        standard_logits, robust_logits = apply_maps(standard_logits, robust_logits, self.standard_map, self.robust_map)
        return mix_log_probs(standard_logits, robust_logits, self.alpha_from_gamma(gamma),
                             standard_scale=self.standard_scale, robust_scale=self.robust_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(*self.components(x))

    def describe(self) -> dict:
        return {"type": "AdaptiveMixedClassifier", "gate": type(self.gate).__name__,
                "standard_layers": list(self.standard_layers), "robust_layers": list(self.robust_layers),
                "gamma_scale": self.gamma_scale, "gamma_bias": self.gamma_bias, "alpha_range": list(self.alpha_range),
                "gamma_clamp": self.gamma_clamp, "bn_momentum": self.gamma_bn.momentum,
                "standard_scale": self.standard_scale, "robust_scale": self.robust_scale,
                **({"standard_map": describe_map(self.standard_map), "robust_map": describe_map(self.robust_map)}
                   if self.standard_map is not None or self.robust_map is not None else {})}


def mixer_state(model: AdaptiveMixedClassifier) -> tuple[dict[str, torch.Tensor], dict]:
    """The trained part of an adaptive composite: the gate's and γ's BatchNorm tensors (``gate.*``,
    ``gamma_bn.*``) and the gate's config. Mixer files and bundles both store these."""
    if type(model.gate).__name__ not in GATE_TYPES or not hasattr(model.gate, "config"):
        raise TypeError(f"only {' and '.join(GATE_TYPES)} gates are saved; save a custom gate's state_dict yourself")
    tensors = {f"gate.{k}": v for k, v in model.gate.state_dict().items()}
    tensors.update({f"gamma_bn.{k}": v for k, v in model.gamma_bn.state_dict().items()})
    return tensors, model.gate.config()


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def adaptive_from_state(standard: nn.Module, robust: nn.Module, composite: dict, gate_config: dict,
                        tensors: dict[str, torch.Tensor]) -> AdaptiveMixedClassifier:
    """Rebuild an adaptive composite around ``standard`` and ``robust`` from its description
    (:meth:`AdaptiveMixedClassifier.describe`), its gate config and the tensors of :func:`mixer_state`."""
    gate = gate_from_config(gate_config)
    gate.load_state_dict(_with_prefix(tensors, "gate."))
    c = composite
    model = AdaptiveMixedClassifier(
        standard, robust, gate, standard_layers=c["standard_layers"], robust_layers=c["robust_layers"],
        gamma_scale=c["gamma_scale"], gamma_bias=c["gamma_bias"], alpha_range=tuple(c["alpha_range"]),
        standard_scale=c["standard_scale"], robust_scale=c["robust_scale"],
        standard_map=map_from_description(c.get("standard_map")), robust_map=map_from_description(c.get("robust_map")),
        gamma_clamp=c.get("gamma_clamp"), bn_momentum=c.get("bn_momentum", 0.1))
    model.gamma_bn.load_state_dict(_with_prefix(tensors, "gamma_bn."))
    return model.eval()


def save_adaptive(stem, model: AdaptiveMixedClassifier, **metadata) -> None:
    """Save the gate (one of ``GATE_TYPES``) and γ's BatchNorm, with fingerprints of both base models
    so that the mixer is never paired with other base models by mistake."""

    tensors, gate_config = mixer_state(model)
    meta = {
        "kind": "adaptive-mixer",
        "gate": gate_config,
        "composite": model.describe(),
        "base_fingerprints": {"standard": state_fingerprint(model.standard), "robust": state_fingerprint(model.robust)},
        **metadata,
    }
    save_tensors(stem, tensors, meta)


def load_adaptive(stem, standard: nn.Module, robust: nn.Module, *, verify: bool | None = None
                  ) -> AdaptiveMixedClassifier:
    """Rebuild an :class:`AdaptiveMixedClassifier` saved by :func:`save_adaptive` around ``standard`` and
    ``robust``; refuses base models whose weights differ from those the mixer was fit on, a sidecar that
    lacks what the rebuild needs, and a gate whose weights do not fit (``verify``: see ``io.load_tensors``)."""

    tensors, meta = load_tensors(stem, verify=verify)
    if meta.get("kind") != "adaptive-mixer":
        raise CheckpointError(f"{stem} is not an adaptive mixer checkpoint (kind={meta.get('kind')!r})")
    missing = [k for k in ("base_fingerprints", "composite", "gate") if not isinstance(meta.get(k), dict)]
    fp = meta.get("base_fingerprints", {})
    missing += [f"base_fingerprints.{k}" for k in ("standard", "robust") if isinstance(fp, dict) and k not in fp]
    if missing:
        raise CheckpointError(f"the mixer sidecar {stem}.json lacks {', '.join(missing)}: it was cut or edited; "
                              "restore it from the run that saved the mixer")
    for name, m in (("standard", standard), ("robust", robust)):
        if state_fingerprint(m) != fp[name]:
            raise CheckpointError(f"the mixer in {stem} was fit on another {name} model (its weights differ); "
                                  f"pair it with the base models it was trained with")
    try:
        return adaptive_from_state(standard, robust, meta["composite"], meta["gate"], tensors)
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"the gate in {stem} does not fit the architecture its sidecar describes: "
                              f"{state_dict_problem(exc)}") from None
