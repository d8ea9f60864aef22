"""Calibration workflows, on validation data only: the MixedNUTS-style map of the robust logits and its α,
and an adaptive mixer's γ bias and α range."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from ..calibration.gate import GateCalibrationSettings, calibrate_gate, robust_reference
from ..calibration.output_map import MapCalibration, calibrate_logit_map, minimum_margin_inputs
from ..calibration.replay import AdversarialPool
from ..config import Config
from ..distributed import is_main
from ..evaluation import batched_logits
from ..evaluation.autoattack import run_autoattack
from ..io import atomic_write_bytes, write_json
from ..mixer import AdaptiveMixedClassifier, save_adaptive
from ..plots import plot_map_objective
from ..state import CalibrationJournal, settings_key
from .common import load_subset


@dataclass
class MapCalibrationRun:
    calibration: MapCalibration
    n: int
    n_clean_wrong: int
    n_attacked_correct: int
    beta: float
    eps: float
    norm: str
    out: Path

    def format(self) -> str:
        cal = self.calibration
        return "\n".join([
            (f"validation: {self.n} points; robust model {self.n_clean_wrong} clean-wrong, "
            f"{self.n_attacked_correct} correct after APGD-CE/APGD-T ({self.norm} eps={self.eps:g})"),
            (f"chosen map: scale={cal.scale:g} shift={cal.shift:g} power={cal.power:g} (k={cal.k}); alpha={cal.alpha:.4f} "
            f"keeps {100 * self.beta:g}% of attacked-correct margins above {cal.threshold:.4f}; "
            f"{100 * cal.objective:.1f}% of clean-wrong inputs stay above it")])

    def config_with_map(self, cfg: Config) -> Config:
        cal = self.calibration
        return dataclasses.replace(cfg, nonlinear=dataclasses.replace(
            cfg.nonlinear, scale=cal.scale, shift=cal.shift, power=cal.power, alpha=cal.alpha))


def calibrate_map(cfg: Config, robust: nn.Module, out: Path, *, n: int | None = None,
                  device: str = "cpu") -> MapCalibrationRun:
    """Choose the robust-logit map (s, c, p) and α on validation margins: clean-wrong inputs against each
    example's lowest-margin attacked input. Writes ``calibration.json`` and ``objective.png``."""
    nc = cfg.nonlinear
    _, _, _, xs, ys = load_subset(cfg, "val", n or nc.n_calibrate, nc.seed)
    bs = cfg.evaluate.batch_size
    h_clean = batched_logits(robust, xs, batch_size=bs, device=device, progress=True, desc="robust logits")
    res = run_autoattack(robust, xs, ys, eps=cfg.threat.eps, norm=cfg.threat.norm, version="custom",
                         attacks=["apgd-ce", "apgd-t"], seed=nc.seed, batch_size=bs, device=device,
                         options={"apgd.n_iter": nc.attack_iters, "apgd_targeted.n_iter": nc.attack_iters,
                                  "apgd_targeted.n_target_classes": 3})
    # per example the lowest-margin input found (AutoAttack hands back the clean image where it fails)
    x_low = minimum_margin_inputs(robust, xs, ys, eps=cfg.threat.eps, norm=cfg.threat.norm, n_iter=nc.attack_iters,
                                  seed=nc.seed, batch_size=bs, device=device, candidates=(res.x_adv,))
    h_adv = batched_logits(robust, x_low, batch_size=bs, device=device)
    attacked_correct = (h_adv.argmax(1) == ys) & (h_clean.argmax(1) == ys)
    clean_wrong = h_clean.argmax(1) != ys
    cal = calibrate_logit_map(h_adv[attacked_correct], h_clean[clean_wrong], beta=nc.beta, k=nc.k)
    chosen = {"scale": cal.scale, "shift": cal.shift, "power": cal.power}
    plot_map_objective(cal.grid, out / "objective.png", chosen=chosen,
                       title=f"{cfg.data.name} val n={len(ys)}, beta={nc.beta:g}: objective, best scale per cell")
    write_json(out / "calibration.json", {
        **cal.to_dict(), "split": "val", "n": len(ys), "indices_seed": nc.seed,
        "attack": {"name": "apgd-ce + apgd-t3 (official), then per example the lowest margin of those and of "
                           "apgd-ce / apgd-dlr highest-loss iterates (best_loss=True)",
                   "n_iter": nc.attack_iters, "eps": cfg.threat.eps, "norm": cfg.threat.norm,
                   "robust_accuracy_autoattack": res.robust_accuracy,
                   "robust_accuracy": float(attacked_correct.float().mean())}})
    return MapCalibrationRun(cal, len(ys), int(clean_wrong.sum()), int(attacked_correct.sum()), nc.beta,
                             cfg.threat.eps, cfg.threat.norm, out)


def write_config(cfg: Config, path: str | Path) -> None:
    """``cfg`` as a YAML file (tuples as lists), written atomically."""
    atomic_write_bytes(path, yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False).encode())


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


GAMMA_SCALES = (1.0, 2.0, 3.0)  # γ = k·BN(γ_raw) + b: searched with b, α_lo and α_hi
ALPHA_HIS = (0.95, 1.0)


def calibration_key(model: AdaptiveMixedClassifier, cfg: Config, *, x, y, verify_iters: int) -> str:
    """What a calibration's numbers depend on: the composite's weights (bases, gate, γ statistics) and
    current settings, the validation points ``x, y`` and the attacks; the key of its :class:`CalibrationJournal`."""
    mc = cfg.mixer
    settings = {"settings": model.describe(), "eps": cfg.threat.eps, "seed": mc.seed, "verify_iters": verify_iters,
                "strategy": mc.calibration_strategy, "autoattack": list(mc.calibration_autoattack),
                "square_queries": mc.calibration_square_queries, "keep_robust": cfg.sweep.keep_robust,
                "gamma_scales": GAMMA_SCALES, "alpha_his": ALPHA_HIS,
                **({"robust_scales": list(mc.calibration_robust_scales)} if mc.calibration_robust_scales else {})}
    return settings_key(settings, model=model, data=(x, y))


def _calibration_state(stem: Path) -> tuple[Path, Path]:
    """Where a calibration of the mixer at ``stem`` keeps its journal and (a stem) its replay pool."""
    return stem.parent / f"{stem.name}-calibration-journal.json", stem.parent / f"{stem.name}-calibration-replay"


def discard_calibration_state(stem: Path) -> None:
    """Remove the journal and replay pool of the mixer at ``stem`` (its calibration is saved)."""
    journal, pool = _calibration_state(Path(stem))
    for path in (journal, pool.with_name(pool.name + ".safetensors"), pool.with_name(pool.name + ".json")):
        path.unlink(missing_ok=True)


def calibrate_mixer_and_save(model: AdaptiveMixedClassifier, cfg: Config, robust: nn.Module, stem: Path, *,
                             metadata: dict, n_calibrate: int = 500, verify_iters: int = 50,
                             device: str = "cpu", keep_state: bool = False) -> str:
    """Choose the gate's γ bias and α range on validation points (never test) and save the mixer at
    ``stem``; the config's ``mixer.alpha_range`` / ``eval_gamma_bias``, when set, are used as given.
    The journal and replay pool are removed once the mixer is saved; ``keep_state`` leaves them for the
    caller to remove with :func:`discard_calibration_state` when its own later work is done (until then a
    rerun reads every check back instead of attacking again). Returns a summary of what was chosen."""
    if cfg.mixer.alpha_range:  # the config fixes them (e.g. the paper's released values): no calibration
        model.alpha_range = tuple(cfg.mixer.alpha_range)
        model.gamma_bias = float(cfg.mixer.eval_gamma_bias)
        save_adaptive(stem, model, calibration={"source": "config", "alpha_range": list(model.alpha_range),
                                                "gamma_bias": model.gamma_bias}, dataset=cfg.data.name, **metadata)
        return (f"saved {stem}.safetensors (+ .json) with the config's alpha range {list(model.alpha_range)} and "
                f"gamma bias {model.gamma_bias:g} (not calibrated)")
    seed = cfg.mixer.seed
    x_all, y_all, _, xv, yv = load_subset(cfg, "val", n_calibrate, seed)
    journal_path, pool_stem = _calibration_state(stem)
    journal = CalibrationJournal(journal_path, calibration_key(model, cfg, x=xv, y=yv, verify_iters=verify_iters))
    ref = journal.get("robust_reference")
    if ref is None:
        ref = robust_reference(robust, xv, yv, eps=cfg.threat.eps, device=device, seed=seed, n_iter=verify_iters,
                               autoattack=cfg.mixer.calibration_autoattack,
                               square_queries=cfg.mixer.calibration_square_queries)
        journal.put("robust_reference", ref)
    settings = GateCalibrationSettings.from_config(cfg, verify_iters=verify_iters, gamma_scales=GAMMA_SCALES,
                                                   alpha_his=ALPHA_HIS)
    pool = AdversarialPool(xv, eps=cfg.threat.eps, path=pool_stem)
    cal = calibrate_gate(model, xv, yv, settings, robust_reference=ref, device=device, progress=is_main(),
                         journal=journal, pool=pool, clean_data=(x_all, y_all) if cfg.mixer.calibration_clean == "split" else None)
    cal["robust_reference_attack"] = {
        "name": "apgd-ce + apgd-t3" + "".join(f" + {a} (official)" for a in cfg.mixer.calibration_autoattack),
        "n_iter": verify_iters, "seed": seed,
        **({"square_queries": cfg.mixer.calibration_square_queries} if "square" in cfg.mixer.calibration_autoattack else {})}
    save_adaptive(stem, model, calibration=cal, dataset=cfg.data.name, **metadata)
    write_json(stem.parent / "calibration.json", cal)
    if not keep_state:
        discard_calibration_state(stem)
    ch = cal["chosen"]
    checks = "".join(f", {a.upper()} (official)" for a in cfg.mixer.calibration_autoattack)
    return (f"saved {stem}.safetensors (+ .json)\n"
            f"calibrated on {cal['n']} validation points: gamma_scale={ch['gamma_scale']:g}, "
            f"gamma_bias={ch['gamma_bias']:g}, alpha range [{ch['alpha_lo']:g}, {ch['alpha_hi']:g}], "
            f"robust_scale={model.robust_scale:g}: clean "
            f"{100 * ch['clean']:.2f}% ({cal['clean_n']} validation images), robust {100 * cal['robust_verified']:.2f}% under gate-aware APGD-CE "
            f"(w 0, 0.5, 1), APGD-T, transfer{checks}, {len(cal['checked'])} candidates checked "
            f"(robust model alone, APGD-CE/APGD-T{checks}: {100 * ref:.2f}%; target {100 * cfg.sweep.keep_robust:g}% of it"
            f"{'' if cal['target_met'] else ', NOT met'})")

