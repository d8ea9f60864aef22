"""The paper's released mixing networks as they are (Bai et al., arXiv 2301.12554).

Two file layouts are read, both with ``torch.load(weights_only=True)``:

* the trainer's checkpoints (``CompModel/<dataset>_<model>_best.pt``): ``{"model": <mixing network>,
  "bn": <γ's BatchNorm>, ...}`` (the optimiser and scheduler states are ignored);
* a whole composite's state dict (what RobustBench stores for the released rows): ``policy_net.*``, ``bn.*``,
  the scalars ``gamma_scale``, ``gamma_bias``, ``alpha_scale``, ``alpha_bias``, ``std_scale``, ``rob_scale``
  and both base models under ``models.0.*`` / ``models.1.*``, behind any wrapper prefix.

The mixing network loads strictly into :class:`~adasmooth.gates.PaperMixingNetwork`; the composite is an
ordinary :class:`~adasmooth.mixer.AdaptiveMixedClassifier` around the user's base models, with the evaluation
settings the release used (``RELEASED_SETTINGS``) unless the file carries its own.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .features import FeatureTap
from .gates import PaperMixingNetwork
from .io import CheckpointError
from .mixer import AdaptiveMixedClassifier

# The evaluation settings of the released composites (the release's RobustBench script): γ = k·BN(γ_raw) + b,
# α confined to [α_lo, α_hi], logit scales of the standard and the robust base.
RELEASED_SETTINGS = {
    "cifar100-edm": {"gamma_scale": 2.0, "gamma_bias": 1.3, "alpha_range": (0.84, 0.99),
                     "standard_scale": 2.0, "robust_scale": 1.0},
    "cifar100-trades": {"gamma_scale": 2.0, "gamma_bias": 1.0, "alpha_range": (0.815, 0.915),
                        "standard_scale": 2.0, "robust_scale": 1.0},
    "cifar10-edm": {"gamma_scale": 2.0, "gamma_bias": 1.05, "alpha_range": (0.96, 1.0),
                    "standard_scale": 1.2, "robust_scale": 0.3},
}
# The released gates read BiT ResNet-152x2's first two block groups (at 128x128) and WRN-70-16's first two.
STANDARD_TAPS = ("body.block1", "body.block2")
ROBUST_TAPS = ("layer.0", "layer.1")
_SCALARS = ("gamma_scale", "gamma_bias", "alpha_scale", "alpha_bias", "std_scale", "rob_scale")


@dataclass
class ReleasedMixer:
    """What a release file holds: the mixing network's and γ's BatchNorm tensors, the scalars it carries
    (composite files only) and the base models' tensors where it holds them."""

    gate: dict[str, torch.Tensor]
    bn: dict[str, torch.Tensor]
    settings: dict = field(default_factory=dict)
    bases: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return 4 if "conv1x1.weight" in self.gate else 3


def read_released_mixer(path: str | Path) -> ReleasedMixer:
    """Read a released mixing-network file in either layout (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"released mixing network {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise CheckpointError(f"{path} cannot be read with torch.load(weights_only=True), which adasmooth insists on "
                              f"(it holds objects other than tensors and plain containers): {str(exc).splitlines()[0]}"
                              ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("bn"), dict):
        return ReleasedMixer(_tensors(obj["model"]), _tensors(obj["bn"]))
    if isinstance(obj, dict):
        return _from_composite(_tensors(obj.get("state_dict", obj)), path)
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a released mixing network")


def _tensors(d: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if torch.is_tensor(v)}


def _from_composite(state: dict[str, torch.Tensor], path: Path) -> ReleasedMixer:
    anchor = next((k for k in state if ".policy_net." in f".{k}"), None)
    if anchor is None:
        raise CheckpointError(f"{path} holds neither a trainer checkpoint ('model' and 'bn') nor a composite "
                              "state dict (no 'policy_net.*' keys)")
    prefix = anchor[: f".{anchor}".index(".policy_net.")]

    def part(name: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + len(name):]: v for k, v in state.items() if k.startswith(prefix + name)}

    settings = {k: float(state[prefix + k]) for k in _SCALARS if prefix + k in state}
    return ReleasedMixer(part("policy_net."), part("bn."), settings,
                         {role: s for role, s in (("standard", part("models.0.")), ("robust", part("models.1."))) if s})


def load_gate_strictly(gate: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> nn.Module:
    """``gate.load_state_dict(state)`` with an error that names the missing and unexpected keys and the
    first shape mismatch."""
    own = gate.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {type(gate).__name__}: {len(missing)} missing keys "
                              f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors have the wrong shape; first {bad[0][0]}: file "
                              f"{bad[0][1]}, gate {bad[0][2]} (are in_planes right?)")
    gate.load_state_dict(state)
    return gate


def resolve_taps(model: nn.Module, names: tuple[str, ...], role: str) -> list[str]:
    """``names`` as they sit in ``model``: directly, or inside our input wrappers (``model.``, ``model.model.``)."""
    modules = dict(model.named_modules())
    for prefix in ("", "model.", "model.model."):
        if all(prefix + n in modules for n in names):
            return [prefix + n for n in names]
    raise CheckpointError(f"the {role} model has none of the released taps {list(names)} (directly or inside "
                          "an input wrapper); give its layers explicitly")


def composite_settings(released: ReleasedMixer, settings: str | dict | None) -> dict:
    """The composite's settings: ``settings`` (a key of ``RELEASED_SETTINGS`` or a dict) where given, else
    the scalars the file carries; an error where neither says them."""
    if isinstance(settings, str):
        if settings not in RELEASED_SETTINGS:
            raise ValueError(f"no released settings named {settings!r}; known: {', '.join(RELEASED_SETTINGS)}")
        return dict(RELEASED_SETTINGS[settings])
    if settings is not None:
        return dict(settings)
    s = released.settings
    if not all(k in s for k in _SCALARS):
        raise ValueError("this file carries no evaluation settings (a trainer checkpoint): name the released row's "
                         f"settings, one of {', '.join(RELEASED_SETTINGS)}")
    return {"gamma_scale": s["gamma_scale"], "gamma_bias": s["gamma_bias"],
            "alpha_range": (s["alpha_bias"], min(1.0, s["alpha_bias"] + s["alpha_scale"])),
            "standard_scale": s["std_scale"], "robust_scale": s["rob_scale"]}


def tap_channels(model: nn.Module, layer: str, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Channels of ``layer``'s output in a dry run of ``model`` on zeros of ``input_shape``."""
    with FeatureTap(model, [layer]) as tap, torch.no_grad():
        p = next(model.parameters(), None)
        model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
        return int(tap.features()[0].shape[1])


def load_released_mixer(path: str | Path, standard: nn.Module, robust: nn.Module, *,
                        settings: str | dict | None = None, in_planes: tuple[int, int] | None = None,
                        standard_layers: list[str] | None = None, robust_layers: list[str] | None = None,
                        input_shape: tuple[int, ...] = (3, 32, 32)) -> AdaptiveMixedClassifier:
    """The released composite around ``standard`` (BiT, possibly inside an input resize) and ``robust``
    (WRN-70-16), in eval mode. ``settings``: a key of ``RELEASED_SETTINGS`` (``cifar100-edm``, ...) or a
    dict of :class:`AdaptiveMixedClassifier` keywords; None takes the file's own (composite files).
    ``in_planes`` (the channels of each model's first tapped depth; the released CIFAR gates: (512, 256)) is
    measured from the models when not given."""
    released = read_released_mixer(path)
    s_layers = list(standard_layers or resolve_taps(standard, STANDARD_TAPS, "standard"))
    r_layers = list(robust_layers or resolve_taps(robust, ROBUST_TAPS, "robust"))
    if in_planes is None:
        in_planes = (tap_channels(standard, s_layers[0], input_shape), tap_channels(robust, r_layers[0], input_shape))
    gate = load_gate_strictly(PaperMixingNetwork(in_planes, version=released.version), released.gate,
                              source=f"{path} (mixing network)")
    kwargs = composite_settings(released, settings)
    model = AdaptiveMixedClassifier(standard, robust, gate, standard_layers=s_layers, robust_layers=r_layers,
                                    gamma_clamp=0.6, bn_momentum=0.01, **kwargs)
    bn_own = model.gamma_bn.state_dict()
    if set(released.bn) != set(bn_own):
        raise CheckpointError(f"{path}: γ's BatchNorm has keys {sorted(released.bn)}, expected {sorted(bn_own)}")
    model.gamma_bn.load_state_dict(released.bn)
    device = next((t.device for t in standard.parameters()), torch.device("cpu"))
    return model.to(device).eval()


__all__ = ["RELEASED_SETTINGS", "ROBUST_TAPS", "STANDARD_TAPS", "ReleasedMixer", "composite_settings",
           "load_gate_strictly", "load_released_mixer", "read_released_mixer", "resolve_taps", "tap_channels"]
