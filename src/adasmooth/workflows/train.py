"""The base-model training workflow: the config's settings for the kind, optionally overridden."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config
from ..training import train_base
from ..training.base import checkpoint_name


def train(cfg: Config, kind: str, out: Path, *, beta: float | None = None, sigma: float | None = None,
          resume: bool = False, max_epochs: int | None = None, device: str = "cpu",
          config_source: str | None = None) -> str:
    """Train a base model of ``kind`` into ``out``; ``beta`` overrides TRADES' KL weight. Returns what
    happened, for the terminal."""
    if beta is not None:
        if kind != "trades":
            raise ValueError(f"--beta applies to --kind trades only, not {kind!r}")
        if not beta > 0:
            raise ValueError(f"--beta (TRADES' KL weight) must be > 0, got {beta}")
        cfg = dataclasses.replace(cfg, train_trades=dataclasses.replace(cfg.train_trades, trades_beta=beta))
    _, meta = train_base(cfg, kind, out, resume=resume, device=device, config_source=config_source,
                         max_epochs=max_epochs, sigma=sigma)
    if "accuracies" not in meta:
        return f"stopped after {meta['epochs_done']} epochs; continue with --resume"
    lines = [f"saved {out / checkpoint_name(kind, sigma)}.safetensors (+ .json), trained in {meta['train_seconds']:.0f} s"]
    lines += [f"  {k:>24s}: {100 * v:6.2f}%" for k, v in meta["accuracies"].items()]
    return "\n".join(lines)
