"""Read named intermediate layers of any ``nn.Module`` with forward hooks, during its ordinary forward pass.

    tap = FeatureTap(model, ["stage1", "stage2"])
    logits = model(x)               # one ordinary forward pass
    early, middle = tap.features()  # what stage1 and stage2 returned in that pass

The architecture is never edited; the hooks store references (gradients flow through them) and the
model's outputs are unchanged.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn


class LayerNotFoundError(KeyError, ValueError):
    """A tapped layer name that the model does not have (a KeyError, and a ValueError for the CLI)."""

    def __str__(self) -> str:  # the message itself, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


class FeatureTap:
    """Capture the outputs of submodules named ``layers`` (as in ``model.named_modules()``).

    ``features()`` returns them in the order of ``layers`` from the most recent forward pass, and raises
    if a tapped layer did not run in it. Call ``remove()`` (or use ``with``) to detach the hooks.
    """

    def __init__(self, model: nn.Module, layers: list[str] | tuple[str, ...]):
        if not layers:
            raise ValueError("FeatureTap needs at least one layer name")
        modules = dict(model.named_modules())
        for name in layers:
            if name not in modules or name == "":
                close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise LayerNotFoundError(f"{type(model).__name__} has no submodule named {name!r}{hint}")
        self.layers = tuple(layers)
        self._store: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name):
        def hook(module, inputs, output):
            if not torch.is_tensor(output):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, FeatureTap needs a tensor")
            self._store[name] = output

        return hook

    def features(self) -> list[torch.Tensor]:
        """Outputs of the tapped layers from the last forward pass, in the order given."""
        missing = [n for n in self.layers if n not in self._store]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in the last forward pass (are they used in forward()?)"
            )
        return [self._store[n] for n in self.layers]

    def clear(self) -> None:
        """Forget the captured tensors (call before a forward pass to detect layers that do not run)."""
        self._store.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
