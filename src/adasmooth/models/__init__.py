"""Architectures for the embedded default, and a registry that builds them by name.

A checkpoint's JSON sidecar stores ``{"architecture": name, "arch_args": {...}}``; :func:`build` turns
that back into a module without unpickling anything.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .bit import BiTResNetV2, bit_from_tensorflow, bit_to_timm
from .external import build_timm, build_torchvision, load_weights, read_state_dict, unwrap, wrap_inputs
from .resize import InputResize
from .small_resnet import Normalize, SmallResNet
from .wide_resnet import WideResNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "bit_resnetv2": BiTResNetV2,
    "small_resnet": SmallResNet,
    "wide_resnet": WideResNet,
}
EXTERNAL = {"torchvision": build_torchvision, "timm": build_timm}


def build(name: str, **arch_args) -> nn.Module:
    """Build an architecture by name with keyword arguments.

    ``name`` is a registered architecture (``small_resnet``, ``wide_resnet``, ``bit_resnetv2``) or ``torchvision:<name>`` /
    ``timm:<name>`` (optional extras, imported here). ``mean``/``std`` (normalisation inside the model, for
    architectures that lack it) and ``input_size`` (resize the input, :class:`InputResize`) wrap any of them.
    """
    args = dict(arch_args)
    wrap = {k: args.pop(k) for k in ("input_size",) if k in args}
    library, _, external = name.partition(":")
    if external:
        if library not in EXTERNAL:
            raise ValueError(f"unknown architecture library {library!r}; known: {', '.join(EXTERNAL)}")
        wrap.update({k: args.pop(k) for k in ("mean", "std") if k in args})
        model = EXTERNAL[library](external, **args)
    elif name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}, "
                         f"or torchvision:<name> / timm:<name>")
    else:
        try:
            model = ARCHITECTURES[name](**args)
        except TypeError as exc:
            raise ValueError(f"bad arguments for architecture {name!r}: {exc}") from None
    return wrap_inputs(model, **wrap) if wrap else model


__all__ = ["ARCHITECTURES", "BiTResNetV2", "InputResize", "Normalize", "SmallResNet", "WideResNet", "bit_from_tensorflow", "bit_to_timm", "build", "load_weights",
           "read_state_dict", "unwrap", "wrap_inputs"]
