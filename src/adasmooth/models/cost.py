"""What a module costs: parameters, and multiply-add FLOPs of one forward pass (convolutions and linear
layers, counted by forward hooks on a real call)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(module: nn.Module, run: Callable[[], object]) -> int:
    """FLOPs (2 × multiply-adds) of the convolutions and linear layers inside ``module`` during ``run()``
    (any call that makes ``module`` run, e.g. the whole composite's forward)."""
    total = 0

    def hook(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * output.numel() * per_output
        elif isinstance(layer, nn.Linear):
            total += 2 * output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def gate_cost(composite, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu") -> dict:
    """Parameters and forward FLOPs per image of an adaptive composite's gate, each base model, and the
    gate relative to the two bases together."""
    x = torch.zeros((1, *input_shape), device=device)
    was_training = composite.training
    composite.eval()
    out = {}
    for name in ("standard", "robust", "gate"):
        part = getattr(composite, name)
        out[name] = {"parameters": count_parameters(part), "flops": forward_flops(part, lambda: composite(x))}
    composite.train(was_training)
    bases = {k: out["standard"][k] + out["robust"][k] for k in ("parameters", "flops")}
    out["gate_over_bases"] = {k: out["gate"][k] / bases[k] if bases[k] else float("nan") for k in bases}
    return out


def format_gate_cost(cost: dict) -> str:
    g, r = cost["gate"], cost["gate_over_bases"]
    return (f"gate: {g['parameters']:,} parameters ({r['parameters']:.2f}x the two bases), "
            f"{g['flops'] / 1e6:.1f} MFLOPs per image ({r['flops']:.2f}x the two bases)")
