"""The (standard, robust) pair a run works on: the config's ``bases`` section, or the shipped models."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from .config import BaseModelSpec, Config
from .io import CheckpointError
from .models import build, load_weights
from .models.external import load_robustbench
from .pretrained import load_pretrained

logger = logging.getLogger(__name__)


def build_base(spec: BaseModelSpec, *, num_classes: int | None = None, input_shape: tuple[int, ...] | None = None,
               device: str | torch.device = "cpu", random_weights: bool = False, role: str = "base") -> nn.Module:
    """Build one base model from its spec and load its weights (eval mode, on ``device``).

    ``random_weights=True`` skips the weights (dry construction, timing). A missing weights file is an
    error that says where the paper's file came from; a class count other than the data set's is an error.
    """

    if spec.robustbench:
        zoo = {k: v for k, v in spec.args.items() if k in ("dataset", "threat_model", "model_dir")}
        model = load_robustbench(spec.robustbench, **zoo)
    else:
        if spec.architecture is None:
            raise ValueError(f"the {role} model's spec names no architecture")
        model = build(spec.architecture, **spec.args)
        if not random_weights:
            if spec.weights is None:
                raise CheckpointError(f"the {role} model ({spec.architecture}) has no weights file in the config"
                                      + (f"; the paper used {spec.source}" if spec.source else ""))
            path = Path(spec.weights).expanduser()
            if not path.is_file():
                raise CheckpointError(f"{role} weights {path} not found" + (f"; the paper used {spec.source}"
                                                                              if spec.source else ""))
            load_weights(model, path, source=spec.source or None)
    model = model.to(device).eval()
    if num_classes is not None and input_shape is not None:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape), device=device))
        if out.shape[-1] != num_classes:
            raise ValueError(f"the {role} model gives {out.shape[-1]} classes, the data set has {num_classes}")
    return model


def load_bases(cfg: Config, *, device: str | torch.device = "cpu", random_weights: bool = False
               ) -> tuple[nn.Module, nn.Module]:
    """``(standard, robust)`` as ``cfg.bases`` says; the shipped pair where a side is left null."""
    n_classes = data_mod.num_classes(cfg.data.name)
    sides = {}
    for role in ("standard", "robust"):
        spec = getattr(cfg.bases, role)
        if spec.architecture is not None or spec.robustbench is not None:
            sides[role] = build_base(spec, num_classes=n_classes, input_shape=data_mod.IMAGE_SHAPES[cfg.data.name],
                                     device=device, random_weights=random_weights, role=role)
    if len(sides) < 2:

        pair = load_pretrained(cfg.data.name, device=str(device))
        sides.setdefault("standard", pair.standard)
        sides.setdefault("robust", pair.robust)
    return sides["standard"], sides["robust"]
