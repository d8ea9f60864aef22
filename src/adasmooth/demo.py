"""The main job on the embedded default: choose α on validation, report base models and mixture on test.

Steps: load the shipped Fashion-MNIST pair; sweep α (and logit scales) on the validation split and pick
the point with the most clean accuracy that keeps ``keep_robust`` of the robust model's robust accuracy;
then on the test set measure clean accuracy on every image and AutoAttack (plus transfer attacks from
each base model, for the mixture) on a fixed, seeded subset; write results JSON and plots.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from . import data as data_mod
from .config import Config
from .distributed import is_main
from .evaluation import AutoAttackSpec, batched_logits
from .evaluation.margins import margin_groups, margin_summary
from .evaluation.plans import attack_plan
from .evaluation.report import environment
from .evaluation.sharded import evaluate_in_chunks
from .evaluation.surrogate import has_logit_maps
from .evaluation.sweep import fast_attacks, sweep
from .io import write_json
from .mixing import MixedClassifier, mix_log_probs, nonlinear_mixture
from .plots import plot_alpha_hist, plot_margins, plot_tradeoff
from .pretrained import load_pretrained, with_shipped_nonlinear

logger = logging.getLogger(__name__)


def figure_of_merit(clean_std: float, clean_rob: float, clean_mix: float, robust_rob: float, robust_mix: float) -> dict:
    """gap closed = (clean_mix - clean_rob)/(clean_std - clean_rob); robust kept = robust_mix/robust_rob."""
    gap = clean_std - clean_rob
    return {
        "gap_closed": (clean_mix - clean_rob) / gap if gap > 0 else float("nan"),
        "robust_kept": robust_mix / robust_rob if robust_rob > 0 else float("nan"),
    }


def run_demo(
    cfg: Config,
    out_dir: str | Path,
    *,
    n: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    n_sweep: int | None = None,
) -> dict:
    """Run the demo and write ``out_dir/results.json``, ``tradeoff.png``, ``margins.png``.

    ``n`` is the number of test points under AutoAttack (default ``cfg.demo.n_autoattack``);
    ``n_sweep`` the validation points attacked per sweep point (default ``cfg.sweep.n_robust``).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = cfg.demo.n_autoattack if n is None else n
    n_sweep = cfg.sweep.n_robust if n_sweep is None else n_sweep
    if n < 1 or n_sweep < 1:
        raise ValueError(f"--n and the sweep size must be >= 1, got {n}, {n_sweep}")
    eps, norm, bs = cfg.threat.eps, cfg.threat.norm, cfg.evaluate.batch_size
    pair = load_pretrained(cfg.data.name, device=str(device))
    std, rob = pair.standard, pair.robust

    # 1. choose α and the logit scales on the validation split only
    x_val, y_val = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
    sw = cfg.sweep
    result = sweep(std, rob, x_val, y_val, alphas=sw.alphas, eps=eps, norm=norm,
                   standard_scales=sw.standard_scales, robust_scales=sw.robust_scales, n_robust=n_sweep,
                   attacks=fast_attacks(sw.attack, steps=sw.attack_steps, seed=sw.seed), keep_robust=sw.keep_robust,
                   seed=sw.seed, device=device, batch_size=bs, progress=progress)
    chosen = result.chosen
    if chosen is None:
        logger.warning("no grid point kept %.0f%% of the robust accuracy; using the robust model (alpha=1)",
                       100 * sw.keep_robust)
        alpha, s_g, s_h = 1.0, 1.0, 1.0
    else:
        alpha, s_g, s_h = chosen.alpha, chosen.standard_scale, chosen.robust_scale
    mixed = MixedClassifier(std, rob, alpha=alpha, standard_scale=s_g, robust_scale=s_h).eval()

    # 2. clean accuracy on the whole test set: one forward pass per base model
    x_test, y_test = data_mod.load(cfg.data.name, "test", root=cfg.data.root)
    g = batched_logits(std, x_test, batch_size=bs, device=device, progress=progress, desc="test: standard")
    h = batched_logits(rob, x_test, batch_size=bs, device=device, progress=progress, desc="test: robust")
    mix = mix_log_probs(g, h, alpha, standard_scale=s_g, robust_scale=s_h)
    clean_full = {name: float((z.argmax(1) == y_test).float().mean()) for name, z in
                  (("standard", g), ("robust", h), ("mixed", mix))}

    # 3. AutoAttack (and, for the mixture, transfer attacks from each base model) on a seeded subset
    idx = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(cfg.demo.seed))[: min(n, len(y_test))]
    xs, ys = x_test[idx], y_test[idx]
    aa_name = AutoAttackSpec(version=cfg.demo.autoattack_version).name
    def plan(kind, surrogate=False):
        return attack_plan(kind, standard=std, robust=rob, pgd_steps=cfg.evaluate.pgd_steps,
                           autoattack=cfg.demo.autoattack_version, surrogate=surrogate, seed=cfg.demo.seed)

    reports = {}
    plans = [
        ("standard", std, plan("base"), {"type": "standard", "checkpoint": "pretrained/fashion-mnist/standard"}),
        ("robust", rob, plan("base"), {"type": "robust", "checkpoint": "pretrained/fashion-mnist/adversarial"}),
        ("mixed", mixed, plan("mixed"), mixed.describe()),
    ]
    nc = with_shipped_nonlinear(cfg.nonlinear, cfg.data.name)  # the config's calibration, else the shipped one
    if None not in (nc.scale, nc.shift, nc.power, nc.alpha):  # a calibrated MixedNUTS-style map
        nl = nonlinear_mixture(std, rob, nc).eval()
        plans.append(("nonlinear", nl, plan("mixed", surrogate=True), nl.describe()))
        with torch.no_grad():
            nl_log_probs = mix_log_probs(g, nl.robust_map(h), nl.alpha)
        clean_full["nonlinear"] = float((nl_log_probs.argmax(1) == y_test).float().mean())
    for key, composite in (("adaptive", pair.adaptive), ("adaptive_nonlinear", pair.adaptive_nonlinear)):
        if composite is None:
            continue
        composite = composite.eval()
        plans.append((key, composite, plan("adaptive", surrogate=has_logit_maps(composite)), composite.describe()))
        with torch.no_grad():
            clean_full[key] = float((batched_logits(composite, x_test, batch_size=bs, device=device, progress=progress,
                                                    desc=f"test: {key}").argmax(1) == y_test).float().mean())
    ada = pair.adaptive
    for name, model, attacks, info in plans:
        logger.info("attacking the %s model on %d test points", name, len(ys))
        # chunked: torchrun ranks share the examples, and the gathered report equals a one-process run's
        rep, kept = evaluate_in_chunks(model, xs, ys, attacks, eps=eps, norm=norm, chunk_size=bs, device=device,
                                       batch_size=bs, model_info=info, dataset=cfg.data.name, split="test",
                                       indices=idx, keep_adversarials=True, progress=progress)
        reports[name] = rep
        if name == "robust":
            robust_adv = kept[aa_name]
        if name == "adaptive":
            adaptive_adv = kept[aa_name]

    # 4. the robust model's margins on the subset: clean vs its own AutoAttack examples
    with torch.no_grad():
        h_clean = h[idx]  # already computed on the whole test set above
        h_adv = batched_logits(rob, robust_adv, batch_size=bs, device=device)
    groups = margin_groups(h_clean, h_adv, ys, scale=s_h)
    margins = margin_summary(groups, alpha=alpha if alpha >= 0.5 else None)

    if not is_main():  # under torchrun, rank 0 writes the figures and the JSON
        return {}
    merit = figure_of_merit(clean_full["standard"], clean_full["robust"], clean_full["mixed"],
                            reports["robust"].robust_accuracy, reports["mixed"].robust_accuracy)
    extra = {f"fixed α on test (clean n={len(y_test)}, robust n={len(ys)}, worst case)":
             (clean_full["mixed"], reports["mixed"].robust_accuracy)}
    merit_nonlinear = None
    if "nonlinear" in reports:
        extra[f"nonlinear α={nc.alpha:.3f} on test (clean n={len(y_test)}, robust n={len(ys)}, worst case)"] = (
            clean_full["nonlinear"], reports["nonlinear"].robust_accuracy)
        merit_nonlinear = figure_of_merit(clean_full["standard"], clean_full["robust"], clean_full["nonlinear"],
                                          reports["robust"].robust_accuracy, reports["nonlinear"].robust_accuracy)
    if "adaptive" in reports:
        extra[f"adaptive on test (clean n={len(y_test)}, robust n={len(ys)}, worst case)"] = (
            clean_full["adaptive"], reports["adaptive"].robust_accuracy)
        merit_adaptive = figure_of_merit(clean_full["standard"], clean_full["robust"], clean_full["adaptive"],
                                         reports["robust"].robust_accuracy, reports["adaptive"].robust_accuracy)
        with torch.no_grad():
            a_clean = torch.cat([ada.alpha(xs[i:i + bs].to(device)).cpu() for i in range(0, len(xs), bs)])
            a_adv = torch.cat([ada.alpha(adaptive_adv[i:i + bs].to(device)).cpu() for i in range(0, len(xs), bs)])
        plot_alpha_hist(a_clean, a_adv, out_dir / "alpha.png",
                        title=f"adaptive α(x) on test subset n={len(ys)}: clean vs AutoAttack ({norm} eps={eps:g})")
    merit_adaptive_nonlinear = None
    if "adaptive_nonlinear" in reports:
        extra[f"adaptive + nonlinear on test (clean n={len(y_test)}, robust n={len(ys)}, worst case)"] = (
            clean_full["adaptive_nonlinear"], reports["adaptive_nonlinear"].robust_accuracy)
        merit_adaptive_nonlinear = figure_of_merit(
            clean_full["standard"], clean_full["robust"], clean_full["adaptive_nonlinear"],
            reports["robust"].robust_accuracy, reports["adaptive_nonlinear"].robust_accuracy)
    plot_tradeoff(result, out_dir / "tradeoff.png", extra_points=extra)
    plot_margins(groups, out_dir / "margins.png", alpha=alpha if alpha >= 0.5 else None,
                 title=f"robust model's margins, test subset n={len(ys)}, attacked by AutoAttack ({norm} eps={eps:g})")
    results = {
        "job": "demo",
        "dataset": cfg.data.name,
        "threat": {"norm": norm, "eps": eps},
        "chosen_on_validation": {"alpha": alpha, "standard_scale": s_g, "robust_scale": s_h,
                                 "rule": result.target["rule"], "keep_robust": sw.keep_robust},
        "sweep_validation": result.to_dict(),
        "test": {
            "clean_accuracy_full": {**clean_full, "n": len(y_test)},
            "robust": {k: v.to_dict() for k, v in reports.items()},
            "subset_seed": cfg.demo.seed,
        },
        "figure_of_merit": merit,
        "figure_of_merit_adaptive": merit_adaptive if "adaptive" in reports else None,
        "figure_of_merit_nonlinear": merit_nonlinear,
        "figure_of_merit_adaptive_nonlinear": merit_adaptive_nonlinear,
        "margins": margins,
        "config": dataclasses.asdict(cfg),
        "environment": environment(device),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out_dir / "results.json", results)
    write_json(out_dir / "margins.json", margins)
    return results


def format_table(results: dict) -> str:
    """The demo's results in the paper's format: clean and AutoAttack accuracy per model."""
    t = results["test"]
    n_clean = t["clean_accuracy_full"]["n"]
    rob = t["robust"]
    thr = results["threat"]
    ch = results["chosen_on_validation"]
    n = rob["mixed"]["n"]
    names = {"standard": "Standard base model", "robust": "Robust base model (PGD-AT)",
             "mixed": f"Mixed, α={ch['alpha']:g} s_g={ch['standard_scale']:g} s_h={ch['robust_scale']:g}"}
    head = f"{'Model':<40s} {'Clean':>8s} {'AutoAttack':>11s} {'Worst case':>11s}"
    lines = [(f"{results['dataset']}, {thr['norm']} eps={thr['eps']:g}; clean on {n_clean} test images, "
              f"robust on {n} seeded test images"), head, "-" * len(head)]
    if "nonlinear" in rob:
        c = rob["nonlinear"]["model"]
        names["nonlinear"] = f"Nonlinear (MixedNUTS map), α={c['alpha']:.3f}"
    if "adaptive" in rob:
        c = rob["adaptive"]["model"]
        names["adaptive"] = f"Adaptive, α in [{c['alpha_range'][0]:g}, {c['alpha_range'][1]:g}]"
    if "adaptive_nonlinear" in rob:
        c = rob["adaptive_nonlinear"]["model"]
        names["adaptive_nonlinear"] = f"Adaptive + nonlinear, α in [{c['alpha_range'][0]:g}, {c['alpha_range'][1]:g}]"
    for key in [k for k in ("standard", "robust", "mixed", "nonlinear", "adaptive", "adaptive_nonlinear") if k in rob]:
        r = rob[key]
        aa = next(a["accuracy"] for a in r["attacks"] if a["type"] == "autoattack")
        lines.append(f"{names[key]:<40s} {100 * t['clean_accuracy_full'][key]:7.2f}% {100 * aa:10.2f}% "
                     f"{100 * r['robust_accuracy']:10.2f}%")
    m = results["figure_of_merit"]
    aa_version = next(a["version"] for a in rob["mixed"]["attacks"] if a["type"] == "autoattack")
    lines.append(f"gap closed {100 * m['gap_closed']:.1f}%, robust kept {100 * m['robust_kept']:.1f}% "
                 f"(worst case over AutoAttack-{aa_version}, PGD and transfer from each base model)")
    if results.get("figure_of_merit_nonlinear"):
        mn = results["figure_of_merit_nonlinear"]
        lines.append(f"nonlinear: gap closed {100 * mn['gap_closed']:.1f}%, robust kept {100 * mn['robust_kept']:.1f}% "
                     f"(worst case over AutoAttack and PGD, each also guided by the straight-through surrogate, "
                     f"and transfer from each base model)")
    if results.get("figure_of_merit_adaptive"):
        ma = results["figure_of_merit_adaptive"]
        lines.append(f"adaptive: gap closed {100 * ma['gap_closed']:.1f}%, robust kept {100 * ma['robust_kept']:.1f}% "
                     f"(worst case over AutoAttack, PGD, gate-aware APGD-CE/APGD-T (w=0.5) and transfer from each base model)")
    if results.get("figure_of_merit_adaptive_nonlinear"):
        mb = results["figure_of_merit_adaptive_nonlinear"]
        lines.append(f"adaptive + nonlinear: gap closed {100 * mb['gap_closed']:.1f}%, robust kept "
                     f"{100 * mb['robust_kept']:.1f}% (the adaptive attack set plus surrogate-guided PGD and AutoAttack)")
    warn = [w for r in rob.values() for w in r["sanity"].get("autoattack_warnings", [])]
    bad = [f"{k}:{c}" for k, r in rob.items() for c, v in r["sanity"].items() if isinstance(v, dict) and not v.get("ok", True)]
    if bad:
        lines.append("sanity checks FAILED: " + ", ".join(bad))
    if warn:
        lines.append(f"AutoAttack warnings ({len(warn)}), see results.json: " + warn[0][:160])
    return "\n".join(lines)
