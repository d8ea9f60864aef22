"""Workflows that look at the trade-off: the α sweep on validation, the comparison of finished
evaluations, and the robust model's margins (benign confidence)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import data as data_mod
from ..calibration.sweep import SweepResult, fast_attacks, sweep
from ..config import Config
from ..evaluation import PGDAttack, batched_logits, evaluate_robustness
from ..evaluation.compare import compare_reports
from ..evaluation.margins import margin_groups, margin_summary
from ..io import write_json
from ..plots import plot_comparison, plot_margins, plot_tradeoff
from .common import load_subset


@dataclass
class SweepRun:
    result: SweepResult
    out: Path
    attack: str
    steps: int
    eps: float
    norm: str

    def format(self) -> str:
        res = self.result
        lines = [(f"validation split: clean on {res.settings['n_clean']}, robust on {res.settings['n_robust']} "
                 f"({self.norm} eps={self.eps:g}, {self.attack} {self.steps} steps)"),
                 f"{'alpha':>6s} {'s_g':>5s} {'s_h':>5s} {'clean':>8s} {'robust':>8s}"]
        for p in res.points:
            mark = "  <- chosen" if p == res.chosen else ""
            lines.append(f"{p.alpha:6.3f} {p.standard_scale:5g} {p.robust_scale:5g} {100 * p.clean_accuracy:7.2f}% "
                         f"{100 * p.robust_accuracy:7.2f}%{mark}")
        lines.append(f"results in {self.out}/")
        return "\n".join(lines)


def run_sweep(cfg: Config, standard: nn.Module, robust: nn.Module, out: Path, *, alphas=None, standard_scales=None,
              robust_scales=None, n: int | None = None, device: str = "cpu") -> SweepRun:
    """The fixed-α (and logit-scale) sweep on the validation split: ``sweep.json`` and ``tradeoff.png``."""
    sw = cfg.sweep
    x, y = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
    res = sweep(standard, robust, x, y, alphas=tuple(alphas or sw.alphas), eps=cfg.threat.eps, norm=cfg.threat.norm,
                standard_scales=tuple(standard_scales or sw.standard_scales),
                robust_scales=tuple(robust_scales or sw.robust_scales), n_robust=n or sw.n_robust,
                attacks=fast_attacks(sw.attack, steps=sw.attack_steps, seed=sw.seed), keep_robust=sw.keep_robust,
                seed=sw.seed, device=device, batch_size=cfg.evaluate.batch_size)
    write_json(out / "sweep.json", res.to_dict())
    plot_tradeoff(res, out / "tradeoff.png")
    return SweepRun(res, out, sw.attack, sw.attack_steps, cfg.threat.eps, cfg.threat.norm)


@dataclass
class CompareRun:
    result: dict
    out: Path

    def format(self) -> str:
        res = self.result
        lines = [(f"{res['dataset']} {res['split']}, {res['norm']} eps={res['eps']:g}: clean on the whole split, "
                 f"worst-case robust on the {res['n_shared']} examples every report shares"),
                 f"{'model':<28s} {'clean':>8s} {'robust':>8s} {'gap closed':>11s} {'kept':>7s} {'vs fixed-α curve':>17s}"]
        for m in res["models"]:
            def pct(v):
                return "" if v is None else f"{100 * v:.1f}%"
            above = "" if m["clean_above_fixed_curve"] is None else f"{100 * m['clean_above_fixed_curve']:+.2f} pts"
            lines.append(f"{m['name']:<28s} {100 * m['clean']:7.2f}% {100 * m['robust']:7.2f}% "
                         f"{pct(m['gap_closed']):>11s} {pct(m['robust_kept']):>7s} {above:>17s}")
        for m in res["models"]:
            if m.get("clean_above_interval") is not None:
                lo, hi = m["clean_above_interval"]
                boot = res["bootstrap"]
                held = "" if boot["clean_resampled"] else "; clean accuracies held fixed"
                bound = ("a lower bound: " if m.get("margin_bound") == "lower" else "")
                lines.append(f"{m['name']}: margin to the fixed-α curve {bound}{100 * m['clean_above_fixed_curve']:+.2f} "
                             f"pts, 95% paired bootstrap interval [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                             f"({boot['replicates']} replicates{held})")
            near = m.get("nearest_fixed")
            if near:
                lines.append(f"{m['name']} vs {near['name']}: robust only for {m['name']} {near['robust_only_model']}, "
                             f"only for {near['name']} {near['robust_only_fixed']} (sign test p = {near['sign_test_p']:.3f})")
        gaps = [f"{m['name']} {100 * m['gradient_free_gap']:.1f}" for m in res["models"]
                if m.get("gradient_free_gap") is not None]
        if gaps:
            lines.append("gradient-free gap (AutoAttack after APGD-T minus after Square, pts): " + ", ".join(gaps))
        for name, extra in (res.get("plan_extras") or {}).items():
            lines.append(f"{name} met {', '.join(extra)} beyond the fixed-α curve's plan: its margin is to the curve's "
                         "concave envelope, a lower bound of the margin under one plan for all")
        if res.get("plan_differences"):
            lines.append("NOT like for like (--allow-different-plans): " + "; ".join(res["plan_differences"]))
        lines.append(f"results in {self.out}/")
        return "\n".join(lines)


def read_reports(items: list[str]) -> dict[str, dict]:
    """``FILE`` or ``NAME=FILE`` evaluate JSONs, by name (the file stem when unnamed)."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if name in named:
            raise ValueError(f"two reports are named {name!r}; name them NAME=FILE")
        try:
            named[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the report {path}: {exc}") from None
    return named


def run_compare(reports: dict[str, dict], out: Path, *, standard: str | None = None,
                robust: str | None = None, allow_plan_mismatch: bool = False, n_bootstrap: int = 2000) -> CompareRun:
    """Evaluate reports on their shared examples: ``compare.json`` and ``tradeoff.png``. Reports whose attack
    plans differ are refused unless ``allow_plan_mismatch``; ``n_bootstrap`` sets the paired bootstrap."""
    res = compare_reports(reports, standard=standard, robust=robust, allow_plan_mismatch=allow_plan_mismatch,
                          n_bootstrap=n_bootstrap)
    write_json(out / "compare.json", res)
    plot_comparison(res, out / "tradeoff.png")
    return CompareRun(res, out)


@dataclass
class MarginsRun:
    summary: dict
    out: Path

    def format(self) -> str:
        lines = []
        for g in ("clean_correct", "clean_wrong", "attacked_correct", "attacked_wrong"):
            s = self.summary[g]
            extra = f", {100 * s['share_above_threshold']:.1f}% above (1-a)/a" if "share_above_threshold" in s else ""
            lines.append(f"{g:<17s} n={s['count']:5d}  median margin {s.get('median', float('nan')):.3f}{extra}")
        if "benign_confidence" in self.summary:
            b = self.summary["benign_confidence"]
            lines.append(f"benign confidence: {100 * b['share_clean_wrong_below_q']:.1f}% of clean-wrong margins lie "
                         f"below the {100 * b['quantile']:g}% quantile ({b['q']:.4f}) of attacked-correct margins")
        lines.append(f"results in {self.out}/")
        return "\n".join(lines)


def run_margins(cfg: Config, robust: nn.Module, out: Path, *, n: int = 1000, split: str = "val",
                alpha: float | None = None, device: str = "cpu") -> MarginsRun:
    """The robust model's probability margins on clean and PGD-attacked inputs (final iterates), by
    correctness: ``margins.json`` and ``margins.png``."""
    _, _, _, xs, ys = load_subset(cfg, split, n, cfg.evaluate.seed)
    kept = {}
    attack = PGDAttack(steps=cfg.evaluate.pgd_steps, step_size=cfg.evaluate.pgd_step_size, seed=cfg.evaluate.seed)
    evaluate_robustness(robust, xs, ys, [attack], eps=cfg.threat.eps, norm=cfg.threat.norm, device=device,
                        sanity_checks=False, on_outcome=lambda name, o: kept.__setitem__(name, o.x_adv))
    groups = margin_groups(batched_logits(robust, xs, device=device),
                           batched_logits(robust, kept[attack.name], device=device), ys)
    summary = margin_summary(groups, alpha=alpha)
    summary["setup"] = {"split": split, "n": len(ys), "attack": attack.settings(), "eps": cfg.threat.eps,
                        "norm": cfg.threat.norm}
    write_json(out / "margins.json", summary)
    plot_margins(groups, out / "margins.png", alpha=alpha,
                 title=f"robust model's margins ({split}, n={len(ys)}, PGD-{attack.steps} eps={cfg.threat.eps:g})")
    return MarginsRun(summary, out)
