"""The adaptive-smoothing workflows: build a composite from the config, fit its mixing network (base
models frozen), then calibrate it on validation and save it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from .. import data as data_mod
from ..config import Config
from ..distributed import init_distributed, is_main
from ..evaluation.separation import gate_separation
from ..features import FeatureTap
from ..io import load_tensors, write_json
from ..mixer import AdaptiveMixedClassifier, MixingNetwork, PaperMixingNetwork, load_adaptive
from ..mixing import nonlinear_mixture
from ..models.cost import format_gate_cost, gate_cost
from ..pretrained import pretrained_dir
from ..seeding import seeded_subset
from ..training import fit_mixer
from .calibrate import calibrate_mixer_and_save, discard_calibration_state
from .common import load_subset, nonlinear_section

logger = logging.getLogger(__name__)


def build_adaptive(cfg: Config, standard: nn.Module, robust: nn.Module, *, input_shape: tuple[int, ...],
                   device: str = "cpu") -> AdaptiveMixedClassifier:
    """A fresh composite as the config's ``mixer`` section says (the gate seeded by ``mixer.seed``)."""
    mc = cfg.mixer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mc.seed)
        if mc.gate == "paper":
            gate = PaperMixingNetwork(_first_tap_channels(standard, robust, mc, input_shape), version=4).to(device)
        else:
            gate = MixingNetwork.from_models(standard, robust, standard_layers=mc.standard_layers,
                                             robust_layers=mc.robust_layers, input_shape=input_shape, width=mc.width,
                                             blocks=mc.blocks, stages=mc.stages).to(device)
    return AdaptiveMixedClassifier(standard, robust, gate, standard_layers=mc.standard_layers,
                                   robust_layers=mc.robust_layers, gamma_scale=mc.gamma_scale,
                                   gamma_bias=mc.gamma_bias, standard_scale=mc.standard_scale,
                                   robust_scale=mc.robust_scale, gamma_clamp=mc.gamma_clamp,
                                   bn_momentum=mc.bn_momentum).to(device)


def _first_tap_channels(standard: nn.Module, robust: nn.Module, mc, input_shape) -> tuple[int, int]:
    """Channels of each base model's first tapped depth (what the paper's gate is sized by)."""
    if len(mc.standard_layers) != 2:
        raise ValueError(f"mixer.gate: paper reads two tapped depths of each base model, the config names "
                         f"{len(mc.standard_layers)}")
    channels = []
    for model, layer in ((standard, mc.standard_layers[0]), (robust, mc.robust_layers[0])):
        with FeatureTap(model, [layer]) as tap, torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=p.device))
            channels.append(int(tap.features()[0].shape[1]))
    return channels[0], channels[1]


def init_gate_from(model: AdaptiveMixedClassifier, stem: str | Path) -> None:
    """Start ``model``'s gate (and γ's BatchNorm statistics) from the mixer saved at ``stem`` (fine-tuning).
    The saved mixer must have been fit on the same base models and have the same gate architecture; the
    γ scale, bias and α range stay those of ``model`` (the training's, not the saved calibration)."""
    saved = load_adaptive(stem, model.standard, model.robust)
    if saved.gate.config() != model.gate.config():
        raise ValueError(f"mixer.init_from: the gate in {stem} ({saved.gate.config()}) differs from the config's "
                         f"({model.gate.config()})")
    model.gate.load_state_dict(saved.gate.state_dict())  # copied onto the model's own device
    model.gamma_bn.load_state_dict(saved.gamma_bn.state_dict())
    logger.info("mixer training starts from the gate in %s", stem)


def fit_and_calibrate(cfg: Config, standard: nn.Module, robust: nn.Module, out: Path, *, resume: bool = False,
                      max_steps: int | None = None, n_calibrate: int = 500, verify_iters: int = 50,
                      device: str = "cpu", config_source: str | None = None, command: str | None = None) -> str:
    """Train the mixing network on the training split, then (rank 0) calibrate it on validation and save
    ``out/mixer``. Its sidecar keeps the training record with the recipe (the config's mixer section), the
    device and ``command`` (the command line that ran this, if given). Returns what happened, for the terminal."""
    _, _, device = init_distributed(device)
    x, y = data_mod.load(cfg.data.name, "train", root=cfg.data.root)
    if cfg.mixer.train_split == "train+val":  # the paper's trainer: every training image (α range fixed by config)
        xv, yv = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
        x, y = torch.cat([x, xv]), torch.cat([y, yv])
    if cfg.mixer.train_examples is not None and cfg.mixer.train_examples < len(y):
        idx = seeded_subset(len(y), cfg.mixer.train_examples, cfg.mixer.seed)
        x, y = x[idx], y[idx]
    model = build_adaptive(cfg, standard, robust, input_shape=tuple(x.shape[1:]), device=device)
    if cfg.mixer.init_from:
        init_gate_from(model, cfg.mixer.init_from)
    cost = format_gate_cost(gate_cost(model, tuple(x.shape[1:]), device=device))
    if is_main():
        logger.info("%s", cost)
    held_out = (load_subset(cfg, "val", cfg.mixer.separation_n, cfg.mixer.seed)[3:]
                if cfg.mixer.separation_every and cfg.mixer.train_split == "train" else None)
    summary = fit_mixer(model, x, y, cfg.mixer, out, eps=cfg.threat.eps, resume=resume, device=device,
                        max_steps=max_steps, progress=is_main(), held_out=held_out)
    if not is_main():
        return ""  # rank 0 reports, calibrates and saves
    if summary["steps"] < summary["total_steps"]:
        return f"stopped at step {summary['steps']}/{summary['total_steps']}; continue with --resume"
    record = {**summary, "recipe": dataclasses.asdict(cfg.mixer), "device": str(device), "command": command}
    saved = calibrate_mixer_and_save(model, cfg, robust, out / "mixer", metadata={"training": record,
                                     "config": config_source}, n_calibrate=n_calibrate,
                                     verify_iters=verify_iters, device=device, keep_state=True)
    done = f"{cost}\ntrained {summary['steps']} steps in {summary['seconds']:.0f} s\n{saved}\n"
    if cfg.mixer.train_split != "train":
        done += "gate separation not measured: the validation images were in the training set"
    else:
        done += held_out_separation(model, cfg, out / "separation.json", n=n_calibrate, device=device)
    discard_calibration_state(out / "mixer")  # kept until here: a rerun reads the checks back, not attacks again
    return done


def held_out_separation(model: AdaptiveMixedClassifier, cfg: Config, path: Path, *, n: int, device: str) -> str:
    """The gate's AUROC between clean validation inputs and final iterates of gate-aware APGD-CE for
    w in {0, 0.5, 1, 2} (``path``: the JSON; finished batches kept in ``.chunks-separation`` beside it, so a
    rerun resumes); returns the line to print."""
    _, _, _, xv, yv = load_subset(cfg, "val", n, cfg.mixer.seed)
    sep = gate_separation(model, xv, yv, eps=cfg.threat.eps, norm=cfg.threat.norm, seed=cfg.mixer.seed,
                          batch_size=cfg.evaluate.batch_size, device=device,
                          cache_dir=path.with_name(f".chunks-{path.stem}"))
    write_json(path, {"split": "val", **sep.to_dict()})
    return (f"gate separation on {len(yv)} validation points (AUROC of α, clean vs gate-aware APGD-CE final iterates): "
            + ", ".join(f"w={w:g}: {v:.3f}" for w, v in sep.auroc.items()))


def _refuse_overwrite(source: Path, target: Path, *, overwrite: bool) -> None:
    strip = {".json", ".safetensors"}
    source = source.with_suffix("") if source.suffix in strip else source
    target = target.with_suffix("") if target.suffix in strip else target
    if overwrite:
        return
    if target.resolve() == source.resolve():
        raise ValueError(f"calibrate-mixer would write over its input {source}: give --out a new stem, or pass "
                         "--overwrite to replace it")
    if target.resolve().is_relative_to(pretrained_dir().resolve()):
        raise ValueError(f"{target} lies inside the installed package's shipped models: write elsewhere, or pass "
                         "--overwrite to replace a shipped file")


def recalibrate(cfg: Config, standard: nn.Module, robust: nn.Module, mixer: str, *, out: str | None = None,
                overwrite: bool = False, nonlinear: bool = False, shipped_pair: bool = True, n_calibrate: int = 500, verify_iters: int = 50,
                device: str = "cpu") -> str:
    """Re-choose a trained mixer's γ bias and α range on validation (optionally with the calibrated
    MixedNUTS map on the robust side first: adaptive + nonlinear). The result goes to ``out`` (default:
    ``<mixer>-recalibrated``); writing over the input mixer, or into the installed package, needs
    ``overwrite``."""
    target = Path(out) if out else Path(mixer).with_name(Path(mixer).name + "-recalibrated")
    _refuse_overwrite(Path(mixer), target, overwrite=overwrite)
    model = load_adaptive(mixer, standard, robust).to(device)
    _, meta = load_tensors(mixer)
    if nonlinear:
        model.robust_map = nonlinear_mixture(standard, robust, nonlinear_section(cfg, shipped_pair=shipped_pair)).robust_map
        model.robust_scale = 1.0
    return calibrate_mixer_and_save(model, cfg, robust, target,
                                    metadata={"training": meta.get("training"), "config": meta.get("config")},
                                    n_calibrate=n_calibrate, verify_iters=verify_iters, device=device)
