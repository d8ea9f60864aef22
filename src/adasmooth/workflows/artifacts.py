"""Other people's artifacts into this package's files: BiT weights renamed for timm, the paper's released mixing
networks saved as adasmooth mixers (so ``evaluate --mixer``, ``export`` and the rest take them), and MixedNUTS'
tuned maps written into a config's ``nonlinear`` section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data as data_mod
from ..config import Config
from ..io import save_tensors
from ..mixer import save_adaptive
from ..models import bit_from_tensorflow, bit_to_timm, read_state_dict
from ..models.bit import is_tensorflow_bit
from ..published import nonlinear_section, read_mixednuts_settings
from ..released import load_released_mixer
from .calibrate import write_config
from .common import load_pair


@dataclass
class Written:
    lines: list[str]

    def format(self) -> str:
        return "\n".join(self.lines)


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def convert_bit_checkpoint(source: str | Path, out: str | Path, *, layout: str = "timm") -> Written:
    """Read a BiT checkpoint in any of its release layouts (Google's PyTorch ``.tar``/``.pt``, TensorFlow
    ``.npz``) and write it as safetensors + JSON in timm's layout (``layout="timm"``) or Google's (``"bit"``)."""
    if layout not in ("timm", "bit"):
        raise ValueError(f"layout must be timm or bit, got {layout!r}")
    state = read_state_dict(source)
    state = bit_from_tensorflow(state) if is_tensorflow_bit(state) else {k.removeprefix("module."): v
                                                                        for k, v in state.items()}
    if layout == "timm":
        state = bit_to_timm(state)
    stem = _stem(out)
    arch = "timm:resnetv2_<depth>x<width>_bit" if layout == "timm" else "bit_resnetv2"
    save_tensors(stem, state, {"kind": "converted-weights", "layout": layout, "source": str(source),
                               "architecture_hint": arch})
    n = sum(t.numel() for t in state.values())
    return Written([f"wrote {len(state)} tensors ({n / 1e6:.1f}M values) in {layout}'s layout to {stem}.safetensors",
                    f"use it as bases.<side>.weights with architecture {arch}"])


def import_released_mixer(cfg: Config, source: str | Path, out: str | Path, *, settings: str | None,
                          in_planes: tuple[int, int] | None = None, standard: str | None = None,
                          robust: str | None = None, device: str | torch.device = "cpu") -> Written:
    """Load a released mixing network around the config's (or the given) base pair, strictly, and save it as
    an adasmooth mixer (fingerprinted to that pair) at ``out``."""
    std, rob = load_pair(cfg, standard=standard, robust=robust, device=device)
    layers = {}  # the config's taps where both models have them (the CIFAR configs name the release's)
    if (set(cfg.mixer.standard_layers) <= {n for n, _ in std.named_modules()}
            and set(cfg.mixer.robust_layers) <= {n for n, _ in rob.named_modules()}):
        layers = {"standard_layers": list(cfg.mixer.standard_layers), "robust_layers": list(cfg.mixer.robust_layers)}
    model = load_released_mixer(source, std, rob, settings=settings, in_planes=tuple(in_planes) if in_planes else None,
                                input_shape=data_mod.IMAGE_SHAPES[cfg.data.name], **layers)
    stem = _stem(out)
    save_adaptive(stem, model, source=str(source), released_settings=settings,
                  training={"note": "released by the paper's authors; imported as it is"})
    lo, hi = model.alpha_range
    return Written([(f"imported {source} ({type(model.gate).__name__} v{model.gate.version}, "
                    f"{sum(p.numel() for p in model.gate.parameters()) / 1e6:.2f}M parameters)"),
                    (f"settings: gamma = {model.gamma_scale:g} * BN(raw) + {model.gamma_bias:g}, alpha in "
                    f"[{lo:g}, {hi:g}], logit scales {model.standard_scale:g} / {model.robust_scale:g}"),
                    f"saved {stem}.safetensors; evaluate it with: adasmooth evaluate --mixer {stem} (same config)"])


def import_mixednuts_map(cfg: Config, out_config: str | Path, *, dataset: str, robust_id: str,
                         source: str | Path | None = None, beta: float | None = None) -> Written:
    """Write ``cfg`` with its ``nonlinear`` section set to MixedNUTS' tuned map for (``dataset``, ``robust_id``)
    from their ``optimal_spca.yaml`` (``source``; None: the packaged copy of the published values)."""
    settings = read_mixednuts_settings(source, dataset, robust_id, beta=beta)
    section = dataclasses.replace(cfg.nonlinear, **nonlinear_section(settings))
    write_config(dataclasses.replace(cfg, nonlinear=section), out_config)
    return Written([(f"MixedNUTS map for {dataset} / {robust_id} (beta {settings['beta']:g}): s {settings['s']:.4g}, "
                    f"c {settings['c']:.4g}, p {settings['p']:.4g}, alpha {settings['alpha']:.6g}; the standard "
                    "model votes one-hot"),
                    f"wrote {out_config}; evaluate with: adasmooth evaluate --config {out_config} --nonlinear"])
