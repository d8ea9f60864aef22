"""Adversarial examples that earlier calibration checks found, tried first against every later candidate.

The candidates of a gate calibration share the composite and differ only in test-time settings (γ, α range,
s_h). An example that walked around the gate at one floor usually still does at the same floor with the other
ceiling, or at the other s_h, since it sits where the gate's α is at its floor. Trying the examples found so
far costs one forward pass each and ends a failing check before its attacks run. It only adds an attack: a
check that passes has survived all of its own attacks as well as these examples.

The pool is kept on disk beside the calibration journal, so a resumed calibration keeps what the checks before
it found, including the attacks of a check that was interrupted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..evaluation.accuracy import correct_mask
from ..io import CheckpointError, load_tensors, save_tensors
from ..state import settings_key

logger = logging.getLogger(__name__)

_KIND = "calibration-replay-pool"


class AdversarialPool:
    """Adversarial examples found for the points ``x`` (within ``eps`` in ℓ∞ of their point), by index.

    With ``path`` (a stem: ``.safetensors`` + ``.json``), the pool loads what a run before found for the same
    points and ε and writes itself after every :meth:`add`.
    """

    def __init__(self, x: torch.Tensor, *, eps: float, path: str | Path | None = None):
        self.x, self.eps, self.path = x, float(eps), None if path is None else Path(path)
        self.key = settings_key({"kind": _KIND, "eps": self.eps}, data=(x,))
        self.index = torch.zeros(0, dtype=torch.long)
        self.examples = x.new_zeros((0, *x.shape[1:]))
        self.sources: list[str] = []  # per example, the attack that found it
        if self.path is not None:
            self._load()

    def __len__(self) -> int:
        return len(self.index)

    def _load(self) -> None:
        try:
            tensors, meta = load_tensors(self.path)
        except CheckpointError:
            return  # none yet (or damaged: start afresh, the examples are only a shortcut)
        if meta.get("key") != self.key:
            logger.warning("replay pool %s was found for other points or another eps; starting afresh", self.path)
            return
        self.index, self.examples = tensors["index"].long(), tensors["examples"].to(self.x.dtype)
        self.sources = list(meta.get("sources", [""] * len(self.index)))
        logger.info("calibration replays %d adversarial examples found before (%s)", len(self), self.path)

    def add(self, index: torch.Tensor, examples: torch.Tensor, source: str = "") -> int:
        """Keep ``examples`` (rows of adversarial inputs for the points ``index``, found by the attack named
        ``source``); rows farther than ε from their point or outside [0, 1] are refused. Returns how many were
        kept."""
        index, examples = index.cpu().long(), examples.detach().cpu().to(self.x.dtype)
        if len(index) == 0:
            return 0
        dist = (examples - self.x[index]).flatten(1).abs().amax(1)
        ok = (dist <= self.eps + 1e-6) & (examples.flatten(1).amin(1) >= 0) & (examples.flatten(1).amax(1) <= 1)
        if not bool(ok.all()):
            logger.warning("replay pool: %d examples outside the eps-ball or [0, 1] refused", int((~ok).sum()))
        self.index = torch.cat([self.index, index[ok]])
        self.examples = torch.cat([self.examples, examples[ok]])
        self.sources += [source] * int(ok.sum())
        if self.path is not None:
            save_tensors(self.path, {"index": self.index, "examples": self.examples},
                         {"kind": _KIND, "key": self.key, "eps": self.eps, "n": len(self), "sources": self.sources})
        return int(ok.sum())

    @torch.no_grad()
    def robust_mask(self, model, y: torch.Tensor, *, device="cpu", batch_size: int = 250) -> torch.Tensor:
        """Per point of ``x``: False where some kept example is misclassified by ``model``."""
        robust = torch.ones(len(self.x), dtype=torch.bool)
        if len(self):
            right = correct_mask(model, self.examples, y[self.index], device=device, batch_size=batch_size).cpu()
            robust[self.index[~right]] = False
        return robust

    def discard(self) -> None:
        """Remove the files (the calibration finished)."""
        if self.path is not None:
            for suffix in (".safetensors", ".json"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
