"""The main job on the embedded default: choose α on validation, then report each model of the shipped pair
on test through the evaluate workflow — one loop over rows (by default standard, robust and adaptive; the
fixed-α mixture, the nonlinear and the adaptive + nonlinear mixtures on request) — and write results JSON and
plots."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import data as data_mod
from ..calibration.sweep import SweepResult, fast_attacks, sweep
from ..config import Config
from ..distributed import is_main
from ..evaluation import AutoAttackSpec, batched_logits
from ..evaluation.margins import margin_groups, margin_summary
from ..evaluation.plans import attack_plan
from ..evaluation.report import environment
from ..evaluation.surrogate import has_logit_maps
from ..io import state_fingerprint, write_json
from ..mixing import MixedClassifier, apply_maps, mix_log_probs
from ..plots import plot_margins, plot_test_points, plot_tradeoff
from ..pretrained import PRETRAINED_NAMES, PretrainedPair, load_pretrained, shipped_comparison, shipped_sweep
from ..seeding import seeded_subset
from ..state import settings_key
from .common import build_mixture, figure_of_merit, nonlinear_section
from .evaluate import EvaluationTarget, ModelEvaluation, evaluate_target

logger = logging.getLogger(__name__)

# AutoAttack on each row is most of the time: on 2 CPU cores about 10 s for the standard model, 150 s for the
# robust one, 300 s for the fixed-α mixture and 500 s for the adaptive one (100 points); the default rows
# are the adaptive model and the two bases its figures of merit need
DEFAULT_ROWS = ("standard", "robust", "adaptive")
ALL_ROWS = ("standard", "robust", "mixed", "adaptive", "nonlinear", "adaptive_nonlinear")
# what each mixture's worst case is taken over, for the table's footnotes
ATTACK_SETS = {
    "mixed": "worst case over {aa}, PGD and transfer from each base model",
    "nonlinear": "worst case over {aa} and PGD, each also guided by the straight-through surrogate, "
                 "and transfer from each base model",
    "adaptive": "worst case over {aa}, PGD, gate-aware APGD-CE/APGD-T (w=0.5) and transfer from each base model",
    "adaptive_nonlinear": "the adaptive attack set plus surrogate-guided PGD and {aa}",
}


@dataclass
class DemoRow:
    key: str
    label: str
    evaluation: ModelEvaluation
    merit: dict | None = None  # gap closed / robust kept, for mixtures


@dataclass
class DemoResult:
    cfg: Config
    chosen: dict
    sweep: SweepResult
    rows: list[DemoRow]
    margins: dict
    n_test: int
    seconds: float
    device: str
    extras: dict = field(default_factory=dict)

    def row(self, key: str) -> DemoRow:
        return next(r for r in self.rows if r.key == key)

    def to_dict(self) -> dict:
        out = {
            "job": "demo", "dataset": self.cfg.data.name,
            "threat": {"norm": self.cfg.threat.norm, "eps": self.cfg.threat.eps},
            "chosen_on_validation": self.chosen, "sweep_validation": self.sweep.to_dict(),
            "sweep_source": self.extras.get("sweep_record", {}).get("source", "computed"),
            "test": {"clean_accuracy_full": {**{r.key: r.evaluation.clean_full for r in self.rows}, "n": self.n_test},
                     "robust": {r.key: r.evaluation.report.to_dict() for r in self.rows},
                     "subset_seed": self.cfg.demo.seed},
            "figure_of_merit": self.row("mixed").merit if any(r.key == "mixed" for r in self.rows) else None,
            "margins": self.margins, "config": dataclasses.asdict(self.cfg), "environment": environment(self.device),
            "seconds": round(self.seconds, 1)}
        out.update({f"figure_of_merit_{r.key}": r.merit for r in self.rows if r.merit is not None and r.key != "mixed"})
        if any(r.evaluation.alpha is not None for r in self.rows):
            out["alpha"] = {r.key: r.evaluation.alpha for r in self.rows if r.evaluation.alpha is not None}
        if self.extras.get("comparison"):
            ref = self.extras["comparison"]
            out["shipped_comparison"] = {k: ref.get(k) for k in ("n", "like_for_like", "fixed_curve", "fixed_envelope",
                                                                  "adaptive", "source")}
        return out

    def format(self) -> str:
        """The results in the paper's format: clean and AutoAttack accuracy per model."""
        thr, n = self.cfg.threat, self.rows[0].evaluation.report.n
        head = f"{'Model':<40s} {'Clean':>8s} {'AutoAttack':>11s} {'Worst case':>11s}"
        lines = [(f"{self.cfg.data.name}, {thr.norm} eps={thr.eps:g}; clean on {self.n_test} test images, "
                 f"robust on {n} seeded test images"), head, "-" * len(head)]
        for r in self.rows:
            rep = r.evaluation.report
            aa = next(a["accuracy"] for a in rep.attacks if a["type"] == "autoattack")
            lines.append(f"{r.label:<40s} {100 * r.evaluation.clean_full:7.2f}% {100 * aa:10.2f}% "
                         f"{100 * rep.robust_accuracy:10.2f}%")
        version = self.cfg.demo.autoattack_version
        aa_label = "AutoAttack" if version == "standard" else f"AutoAttack-{version}"
        for r in (r for r in self.rows if r.merit is not None):
            prefix = "" if r.key == "mixed" else r.key.replace("_", " + ") + ": "
            lines.append(f"{prefix}gap closed {100 * r.merit['gap_closed']:.1f}%, robust kept "
                         f"{100 * r.merit['robust_kept']:.1f}% ({ATTACK_SETS[r.key].format(aa=aa_label)})")
        bad = [f"{r.key}:{c}" for r in self.rows for c, v in r.evaluation.report.sanity.items()
               if isinstance(v, dict) and not v.get("ok", True)]
        warn = [w for r in self.rows for w in r.evaluation.report.sanity.get("autoattack_warnings", [])]
        ref = self.extras.get("comparison")
        if ref:
            a = ref["adaptive"]
            lower = a.get("margin_bound") == "lower"
            note = ("" if ref["like_for_like"] else " (a lower bound: the fixed points met a part of the mixer's attacks)"
                    if lower else " (not like for like: the fixed points met other attacks)")
            lines.append(f"shipped comparison on {ref['n']:,} test points: the mixer {'at least ' if lower else ''}"
                         f"{100 * a['clean_above_fixed_curve']:+.2f} clean points above the fixed-α curve, 95% interval "
                         f"[{100 * a['interval'][0]:+.2f}, {100 * a['interval'][1]:+.2f}]{note}")
        if bad:
            lines.append("sanity checks FAILED: " + ", ".join(bad))
        if warn:
            lines.append(f"AutoAttack warnings ({len(warn)}), see results.json: " + warn[0][:160])
        return "\n".join(lines)

    def write(self, out_dir: Path, groups: dict) -> None:
        n, eps, norm = self.rows[0].evaluation.report.n, self.cfg.threat.eps, self.cfg.threat.norm
        # like with like: the validation sweep alone, and the test rows alone (same points, full plans)
        plot_tradeoff(self.sweep, out_dir / "tradeoff.png")
        plot_test_points({r.key: (r.evaluation.clean_full, r.evaluation.report.robust_accuracy) for r in self.rows},
                         out_dir / "tradeoff-test.png", reference=self.extras.get("comparison"),
                         title=f"test: clean on {self.n_test}, worst case over each model's plan on the same {n} "
                               f"seeded points ({norm} eps={eps:g})")
        alpha = self.chosen["alpha"]
        plot_margins(groups, out_dir / "margins.png", alpha=alpha if alpha >= 0.5 else None,
                     title=f"robust model's margins, test subset n={n}, attacked by AutoAttack ({norm} eps={eps:g})")
        write_json(out_dir / "results.json", self.to_dict())
        write_json(out_dir / "margins.json", self.margins)
        if "sweep_record" in self.extras:  # the record a package ships as pretrained/<dataset>/sweep.json
            write_json(out_dir / "sweep.json", {**self.extras["sweep_record"], "dataset": self.cfg.data.name,
                                                "sweep": self.sweep.to_dict()})


def sweep_record_key(cfg: Config, pair: PretrainedPair, x_val: torch.Tensor, y_val: torch.Tensor, *,
                     n_sweep: int, device) -> str:
    """A hash over everything the validation sweep's result depends on: both bases' weights, the validation
    data, the threat, every sweep setting, the batch size and the device type."""
    settings = {"job": "validation-sweep", "dataset": cfg.data.name, "threat": dataclasses.asdict(cfg.threat),
                "sweep": {**dataclasses.asdict(cfg.sweep), "n_robust": n_sweep}, "batch_size": cfg.evaluate.batch_size,
                "device": torch.device(device).type, "standard": state_fingerprint(pair.standard)}
    return settings_key(settings, model=pair.robust, data=(x_val, y_val))


def choose_alpha(cfg: Config, pair: PretrainedPair, *, n_sweep: int, device, progress: bool,
                 reuse_shipped: bool = True) -> tuple[dict, SweepResult, dict]:
    """α and the logit scales with the most clean accuracy that keep ``keep_robust`` of the robust model's
    robust accuracy, on the validation split only.

    The sweep is seeded, so its result is a function of its settings: when the package ships the record of
    this very sweep (``sweep.json``, same key: same weights, data and settings), it is read instead of
    recomputed (``reuse_shipped=False`` recomputes). Returns (chosen, sweep, record) where ``record`` holds
    the key and the source."""
    t0 = time.perf_counter()
    x_val, y_val = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
    key = sweep_record_key(cfg, pair, x_val, y_val, n_sweep=n_sweep, device=device)
    shipped = shipped_sweep(cfg.data.name) if reuse_shipped and cfg.data.name in PRETRAINED_NAMES else None
    if shipped is not None and shipped["key"] == key:
        logger.info("validation sweep: the shipped record of this sweep (key %s); --fresh-sweep recomputes it", key)
        result, source = SweepResult.from_dict(shipped["sweep"]), "shipped record (sweep.json, same key)"
    else:
        sw = cfg.sweep
        result = sweep(pair.standard, pair.robust, x_val, y_val, alphas=sw.alphas, eps=cfg.threat.eps,
                       norm=cfg.threat.norm, standard_scales=sw.standard_scales, robust_scales=sw.robust_scales,
                       n_robust=n_sweep, attacks=fast_attacks(sw.attack, steps=sw.attack_steps, seed=sw.seed),
                       keep_robust=sw.keep_robust, seed=sw.seed, device=device, batch_size=cfg.evaluate.batch_size,
                       progress=progress)
        source = "computed"
    c = result.chosen
    if c is None:
        logger.warning("no grid point kept %.0f%% of the robust accuracy; using the robust model (alpha=1)",
                       100 * cfg.sweep.keep_robust)
    alpha, s_g, s_h = (1.0, 1.0, 1.0) if c is None else (c.alpha, c.standard_scale, c.robust_scale)
    chosen = {"alpha": alpha, "standard_scale": s_g, "robust_scale": s_h, "rule": result.target["rule"],
              "keep_robust": cfg.sweep.keep_robust}
    return chosen, result, {"kind": "validation-sweep", "key": key, "source": source,
                            "seconds": round(time.perf_counter() - t0, 1)}


def demo_targets(cfg: Config, pair: PretrainedPair, chosen: dict, rows: tuple[str, ...]) -> list[tuple[str, EvaluationTarget]]:
    """(table label, target) per requested row that the shipped pair can supply."""
    std, rob = pair.standard, pair.robust
    mixed, _ = build_mixture(cfg, std, rob, alpha=chosen["alpha"], standard_scale=chosen["standard_scale"],
                             robust_scale=chosen["robust_scale"])
    out = {"standard": ("Standard base model", EvaluationTarget("standard", std, "base", {"type": "standard"})),
           "robust": ("Robust base model", EvaluationTarget("robust", rob, "base", {"type": "robust"})),
           "mixed": (f"Mixed, α={chosen['alpha']:g} s_g={chosen['standard_scale']:g} s_h={chosen['robust_scale']:g}",
                     EvaluationTarget("mixed", mixed, "mixed", mixed.describe()))}
    nc = nonlinear_section(cfg, shipped_pair=True)  # the config's calibration, else the shipped one
    if None not in (nc.scale, nc.shift, nc.power, nc.alpha):
        nl, _ = build_mixture(cfg, std, rob, nonlinear=True)
        out["nonlinear"] = (f"Nonlinear (MixedNUTS map), α={nc.alpha:.3f}",
                            EvaluationTarget("nonlinear", nl, "mixed", nl.describe()))
    for key, label, model in (("adaptive", "Adaptive", pair.adaptive),
                              ("adaptive_nonlinear", "Adaptive + nonlinear", pair.adaptive_nonlinear)):
        if model is not None:
            lo, hi = model.alpha_range
            out[key] = (f"{label}, α in [{lo:g}, {hi:g}]", EvaluationTarget(key, model.eval(), "adaptive", model.describe()))
    unknown = set(rows) - set(ALL_ROWS)
    if unknown:
        raise ValueError(f"unknown demo rows {sorted(unknown)}; choose from {', '.join(ALL_ROWS)}")
    return [out[k] for k in ALL_ROWS if k in rows and k in out]


def run_demo(cfg: Config, out_dir: str | Path, *, n: int | None = None, n_sweep: int | None = None,
             rows: tuple[str, ...] = DEFAULT_ROWS, device: str | torch.device = "cpu", progress: bool = True,
             fresh_sweep: bool = False) -> DemoResult:
    """Choose α on validation (the shipped record of the same sweep unless ``fresh_sweep``), evaluate each
    row on ``n`` seeded test points (default ``cfg.demo.n_autoattack``) under its full attack plan, write
    ``results.json``, ``sweep.json`` and the plots (rank 0)."""
    t0, out_dir = time.perf_counter(), Path(out_dir)
    n = cfg.demo.n_autoattack if n is None else n
    n_sweep = cfg.sweep.n_robust if n_sweep is None else n_sweep
    if n < 1 or n_sweep < 1:
        raise ValueError(f"--n and the sweep size must be >= 1, got {n}, {n_sweep}")
    if set(rows) - set(ALL_ROWS):  # before the sweep, not after it
        raise ValueError(f"unknown demo rows {sorted(set(rows) - set(ALL_ROWS))}; choose from {', '.join(ALL_ROWS)}")
    pair = load_pretrained(cfg.data.name, device=str(device))
    chosen, sweep_result, record = choose_alpha(cfg, pair, n_sweep=n_sweep, device=device, progress=progress,
                                                reuse_shipped=not fresh_sweep)
    x_test, y_test = data_mod.load(cfg.data.name, "test", root=cfg.data.root)
    idx = seeded_subset(len(y_test), n, cfg.demo.seed)
    transfer_cache: dict = {}  # the transfer attacks' images are crafted once for every mixture
    base_logits: dict = {}  # and each base's clean test logits are computed once for every row that mixes them
    evaluated, kept = [], {}
    for label, target in demo_targets(cfg, pair, chosen, rows):
        attacks = attack_plan(target.kind, standard=pair.standard, robust=pair.robust, pgd_steps=cfg.evaluate.pgd_steps,
                              autoattack=cfg.demo.autoattack_version, surrogate=has_logit_maps(target.model),
                              seed=cfg.demo.seed, transfer_cache=transfer_cache)
        evaluation, kept[target.name] = evaluate_target(
            target, attacks, x_test, y_test, idx, cfg=cfg, split="test", device=str(device),
            chunk_size=cfg.evaluate.batch_size, keep_adversarials=True, progress=progress,
            alpha_png=out_dir / "alpha.png" if target.name == "adaptive" else None,
            clean_correct=clean_flags_from_bases(target.model, pair, x_test, y_test, base_logits,
                                                 batch_size=cfg.evaluate.batch_size, device=device, progress=progress))
        evaluated.append(DemoRow(target.name, label, evaluation))
    by_key = {r.key: r.evaluation for r in evaluated}
    for r in evaluated:
        if r.key not in ("standard", "robust") and {"standard", "robust"} <= by_key.keys():
            r.merit = figure_of_merit(by_key["standard"].clean_full, by_key["robust"].clean_full, r.evaluation.clean_full,
                                      by_key["robust"].report.robust_accuracy, r.evaluation.report.robust_accuracy)
    groups = robust_margins(cfg, pair.robust, x_test[idx], y_test[idx], kept.get("robust"), chosen, device=device)
    alpha = chosen["alpha"]
    result = DemoResult(cfg, chosen, sweep_result, evaluated, margin_summary(groups, alpha=alpha if alpha >= 0.5 else None),
                        len(y_test), time.perf_counter() - t0, str(device),
                        extras={"sweep_record": record, "comparison": shipped_comparison(cfg.data.name, pair)})
    if is_main():  # under torchrun, rank 0 writes the figures and the JSON
        result.write(out_dir, groups)
    return result


def clean_flags_from_bases(model, pair: PretrainedPair, x: torch.Tensor, y: torch.Tensor, logits: dict, *,
                           batch_size: int, device, progress: bool = False) -> torch.Tensor | None:
    """Which of ``x`` a base of ``pair`` or a fixed-α mixture of its two bases classifies correctly, from each
    base's logits, computed once into ``logits`` (the same batches as the model's own pass, so the same
    numbers); None for a model that needs its own pass (a gate, another model)."""
    def base(name: str) -> torch.Tensor:
        if name not in logits:
            logits[name] = batched_logits(getattr(pair, name), x, batch_size=batch_size, device=device,
                                          progress=progress, desc=f"{name} logits: clean test")
        return logits[name]

    if model is pair.standard or model is pair.robust:
        out = base("standard" if model is pair.standard else "robust")
    elif (isinstance(model, MixedClassifier) and not torch.is_tensor(model.alpha)
          and model.standard is pair.standard and model.robust is pair.robust):
        g, h = apply_maps(base("standard"), base("robust"), model.standard_map, model.robust_map)
        out = mix_log_probs(g, h, model.alpha, standard_scale=model.standard_scale, robust_scale=model.robust_scale)
    else:
        return None
    return out.argmax(1) == y


def robust_margins(cfg: Config, robust, xs, ys, kept: dict | None, chosen: dict, *, device) -> dict:
    """The robust model's margins on the subset: clean vs its own AutoAttack examples (clean when the robust
    row did not run)."""
    bs = cfg.evaluate.batch_size
    aa_name = AutoAttackSpec.named(cfg.demo.autoattack_version).name
    h_clean = batched_logits(robust, xs, batch_size=bs, device=device)
    h_adv = batched_logits(robust, kept[aa_name], batch_size=bs, device=device) if kept else h_clean
    return margin_groups(h_clean, h_adv, ys, scale=chosen["robust_scale"])
