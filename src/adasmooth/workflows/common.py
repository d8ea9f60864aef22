"""What every workflow needs: the (standard, robust) pair a run works on, the one builder of mixtures of
it, the nonlinear map that goes with it, output folders, and the data split with a seeded subset."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import torch
from torch import nn

from .. import data as data_mod
from ..bases import load_bases
from ..config import BasesConfig, Config, NonlinearConfig
from ..io import load_model
from ..mixer import load_adaptive
from ..mixing import MixedClassifier, nonlinear_mixture
from ..pretrained import PRETRAINED_NAMES, with_shipped_nonlinear
from ..seeding import seeded_subset


def output_dir(base: str | Path | None, prefix: str) -> Path:
    """``base`` when given, else ``results/<prefix>-<time>`` (``results/<time>`` for an empty prefix)."""
    if base:
        return Path(base)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / (f"{prefix}-{stamp}" if prefix else stamp)


def with_data_root(cfg: Config, root: str | None) -> Config:
    """``cfg`` reading its data from ``root`` (unchanged for None)."""
    return cfg if not root else dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def load_pair(cfg: Config, *, standard: str | None = None, robust: str | None = None,
              device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module]:
    """The ``standard`` / ``robust`` checkpoint stems when given, else the config's ``bases``, else the
    shipped pair."""
    std = load_model(standard, map_location=device)[0] if standard else None
    rob = load_model(robust, map_location=device)[0] if robust else None
    if std is None or rob is None:
        cfg_std, cfg_rob = load_bases(cfg, device=device)
        std = std or cfg_std
        rob = rob or cfg_rob
    return std, rob


def download_data(cfg: Config) -> Path:
    """Fetch the config's data set into its root when it is missing (the user asked: ``--download``)."""
    return data_mod.fetch(cfg.data.name, cfg.data.root)


def is_shipped_pair(cfg: Config, *, standard: str | None = None, robust: str | None = None) -> bool:
    return not standard and not robust and cfg.bases == BasesConfig()


def nonlinear_section(cfg: Config, *, shipped_pair: bool) -> NonlinearConfig:
    """The config's nonlinear section; for the shipped pair an uncalibrated one takes the shipped
    calibration (``pretrained/<dataset>/nonlinear.json``)."""
    if shipped_pair and cfg.data.name in PRETRAINED_NAMES:
        return with_shipped_nonlinear(cfg.nonlinear, cfg.data.name)
    return cfg.nonlinear


def build_mixture(cfg: Config, standard: nn.Module, robust: nn.Module, *, mixer: str | Path | None = None,
                  alpha: float | None = None, nonlinear: bool = False, standard_scale: float = 1.0,
                  robust_scale: float = 1.0, shipped_pair: bool = True, device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, str]:
    """The one way a command builds a mixture of ``(standard, robust)`` from its options: the adaptive mixer
    saved at ``mixer``, the nonlinear (MixedNUTS-map) mixture of the config (the shipped calibration for the
    shipped pair), or the fixed-α mixture with its logit scales. Returns the module in eval mode and the kind
    of attack plan it gets (``adaptive`` or ``mixed``). Contradictory options are refused."""
    if mixer and (alpha is not None or nonlinear or standard_scale != 1.0 or robust_scale != 1.0):
        raise ValueError("--mixer evaluates an adaptive mixer with its own alpha(x) and logit scales: it does not go "
                         "with --alpha, --nonlinear, --standard-scale or --robust-scale (evaluate those separately)")
    if mixer:
        return load_adaptive(mixer, standard, robust).to(device).eval(), "adaptive"
    if nonlinear:
        section = nonlinear_section(cfg, shipped_pair=shipped_pair)
        return nonlinear_mixture(standard, robust, section, alpha=alpha).eval(), "mixed"
    if alpha is None:
        raise ValueError("a mixture needs --mixer STEM, --alpha A or --nonlinear")
    return MixedClassifier(standard, robust, alpha=alpha, standard_scale=standard_scale,
                           robust_scale=robust_scale).eval(), "mixed"


def load_subset(cfg: Config, split: str, n: int, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, idx, x[idx], y[idx])``: a whole split and its seeded subset of ``n`` examples."""
    x, y = data_mod.load(cfg.data.name, split, root=cfg.data.root)
    idx = seeded_subset(len(y), n, seed)
    return x, y, idx, x[idx], y[idx]


def figure_of_merit(clean_std: float, clean_rob: float, clean_mix: float, robust_rob: float, robust_mix: float) -> dict:
    """gap closed = (clean_mix - clean_rob)/(clean_std - clean_rob); robust kept = robust_mix/robust_rob."""
    gap = clean_std - clean_rob
    return {
        "gap_closed": (clean_mix - clean_rob) / gap if gap > 0 else float("nan"),
        "robust_kept": robust_mix / robust_rob if robust_rob > 0 else float("nan"),
    }
