"""Figures: the clean-vs-robust trade-off curve and the robust model's margin histograms (PNG)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return plt


def plot_tradeoff(sweep_result, path: str | Path, *, title: str = "", extra_points: dict | None = None) -> Path:
    """Clean accuracy (x) vs robust accuracy (y): one point per α, one curve per logit-scale pair,
    the two base models marked and the straight line between them drawn. ``extra_points`` maps a label
    to ``(clean, robust)`` for additional markers (e.g. the chosen mixture on the test set)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    std, rob = sweep_result.standard, sweep_result.robust
    ax.plot([100 * std["clean_accuracy"], 100 * rob["clean_accuracy"]],
            [100 * std["robust_accuracy"], 100 * rob["robust_accuracy"]], "--", color="grey", lw=1,
            label="straight line between base models")
    curves: dict[tuple, list] = {}
    for p in sweep_result.points:
        if p.robust_accuracy is not None:
            curves.setdefault((p.standard_scale, p.robust_scale), []).append(p)
    for (sg, sh), pts in curves.items():
        pts = sorted(pts, key=lambda p: p.alpha)
        label = "fixed-α mixture" if len(curves) == 1 else f"mixture s_g={sg:g}, s_h={sh:g}"
        ax.plot([100 * p.clean_accuracy for p in pts], [100 * p.robust_accuracy for p in pts], "o-", ms=4, label=label)
        if len(curves) == 1:
            for p in pts:
                ax.annotate(f"{p.alpha:g}", (100 * p.clean_accuracy, 100 * p.robust_accuracy), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.plot(100 * std["clean_accuracy"], 100 * std["robust_accuracy"], "s", color="tab:red", ms=8, label="standard model")
    ax.plot(100 * rob["clean_accuracy"], 100 * rob["robust_accuracy"], "D", color="tab:green", ms=8, label="robust model")
    c = sweep_result.chosen
    if c is not None:
        ax.plot(100 * c.clean_accuracy, 100 * c.robust_accuracy, "*", color="black", ms=14,
                label=f"chosen α={c.alpha:g} (s_g={c.standard_scale:g}, s_h={c.robust_scale:g})")
    for label, (cl, rb) in (extra_points or {}).items():
        ax.plot(100 * cl, 100 * rb, "P", ms=10, label=label)
    st = sweep_result.settings
    ax.set_xlabel(f"clean accuracy (%), n={st.get('n_clean')}")
    ax.set_ylabel(f"robust accuracy (%), {st.get('norm')} eps={st.get('eps')}, n={st.get('n_robust')}")
    ax.set_title(title or "accuracy-robustness trade-off (validation split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_test_points(points: dict, path: str | Path, *, title: str = "", reference: dict | None = None) -> Path:
    """Clean (x) vs worst-case robust (y) accuracy of several models measured alike (the same test points,
    each under its full attack plan): ``points`` maps a label to ``(clean, robust)``; the labels
    ``standard`` and ``robust`` are joined by the straight line between the base models. ``reference`` (a
    shipped ``comparison.json``) adds its fixed-α curve and the adaptive model's point with the 95% interval
    of its margin to that curve, labelled with its number of points and whether the plans were alike."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if reference is not None:
        _draw_reference(ax, reference)
    if "standard" in points and "robust" in points:
        (cs, rs), (cr, rr) = points["standard"], points["robust"]
        ax.plot([100 * cs, 100 * cr], [100 * rs, 100 * rr], "--", color="grey", lw=1,
                label="straight line between base models")
    for label, (clean, robust) in points.items():
        ax.plot(100 * clean, 100 * robust, "o", ms=8, label=label)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title(title or "models on the same test points, each under its full attack plan", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _draw_reference(ax, ref: dict) -> None:
    lower = ref.get("adaptive", {}).get("margin_bound") == "lower" and ref.get("fixed_envelope")
    if lower:  # the fixed points met a part of the mixer's plan: its margin to their envelope is a lower bound
        curve, what = sorted(ref["fixed_envelope"]), "concave envelope of the fixed-α points (they met part of the plan)"
    else:
        alike = "same plans" if ref.get("like_for_like") else "not like for like: the fixed points met fewer attacks"
        curve, what = sorted(ref["fixed_curve"]), f"fixed-α curve ({alike})"
    ax.plot([100 * c for c, _ in curve], [100 * r for _, r in curve], "-", color="tab:purple", lw=1.2, alpha=0.7,
            label=f"{what}, {ref['n']:,} shipped test points")
    a = ref["adaptive"]
    m, (lo, hi) = a["clean_above_fixed_curve"], a["interval"]
    ax.errorbar(100 * a["clean"], 100 * a["robust"], xerr=[[100 * (m - lo)], [100 * (hi - m)]], fmt="*",
                color="tab:purple", ms=10, capsize=3,
                label=f"adaptive on those points: {'at least ' if lower else ''}{100 * m:+.2f} clean above, "
                      f"95% [{100 * lo:+.2f}, {100 * hi:+.2f}]")


def plot_margins(groups: dict, path: str | Path, *, alpha: float | None = None, title: str = "") -> Path:
    """Histograms of the robust model's probability margin on clean and attacked inputs, split by
    correct/wrong; a vertical line at (1-α)/α when ``alpha`` >= 1/2."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    bins = [i / 40 for i in range(41)]
    for ax, kind in zip(axes, ("clean", "attacked")):
        for outcome, color in (("correct", "tab:green"), ("wrong", "tab:red")):
            m = groups[f"{kind}_{outcome}"].float().numpy()
            ax.hist(m, bins=bins, alpha=0.6, color=color, density=True, label=f"{outcome} (n={len(m)})")
        if alpha is not None and alpha >= 0.5:
            ax.axvline((1 - alpha) / alpha, color="black", ls="--", lw=1, label=f"(1-α)/α, α={alpha:g}")
        ax.set_xlabel("robust model's margin p_top1 − p_top2")
        ax.set_ylabel("density")
        ax.set_title(f"{kind} inputs")
        ax.legend(fontsize=8)
    fig.suptitle(title or "benign confidence of the robust model")
    return _save(fig, path)


def plot_alpha_hist(alpha_clean, alpha_attacked, path: str | Path, *, title: str = "", clean_label: str = "clean") -> Path:
    """Histograms of the adaptive model's α(x) on clean and on attacked inputs; ``alpha_attacked`` may map
    labels (e.g. ``"w=0.5, AUROC 0.93"``) to several attacked sets; ``clean_label`` names the first set."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = [i / 50 for i in range(51)]
    attacked = alpha_attacked if isinstance(alpha_attacked, dict) else {"attacked": alpha_attacked}
    colors = ("tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown")
    sets = [(alpha_clean, clean_label, "tab:blue")] + [(a, k, c) for (k, a), c in zip(attacked.items(), colors)]
    for a, label, color in sets:
        a = a.float().numpy()
        ax.hist(a, bins=bins, alpha=0.5, color=color, density=True, label=f"{label} (n={len(a)}, mean {a.mean():.3f})")
    ax.set_xlabel("α(x), weight of the robust model")
    ax.set_ylabel("density")
    ax.set_title(title or "mixing weight chosen by the mixer")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_map_objective(grid: list[dict], path: str | Path, *, chosen: dict | None = None, title: str = "") -> Path:
    """The nonlinear-map calibration objective (share of clean-wrong inputs that keep the robust model's
    answer) over shift × power, the best scale for each cell."""
    import numpy as np

    plt = _pyplot()
    shifts = sorted({r["shift"] for r in grid})
    powers = sorted({r["power"] for r in grid})
    best = np.full((len(powers), len(shifts)), np.nan)
    for r in grid:
        i, j = powers.index(r["power"]), shifts.index(r["shift"])
        best[i, j] = np.nanmin([best[i, j], r["objective"]]) if not np.isnan(best[i, j]) else r["objective"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    im = ax.imshow(best, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(shifts)), [f"{v:g}" for v in shifts])
    ax.set_yticks(range(len(powers)), [f"{v:g}" for v in powers])
    ax.set_xlabel("shift c")
    ax.set_ylabel("power p")
    for i in range(len(powers)):
        for j in range(len(shifts)):
            ax.text(j, i, f"{best[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    if chosen is not None:
        ax.scatter([shifts.index(chosen["shift"])], [powers.index(chosen["power"])], marker="s", s=260,
                   facecolors="none", edgecolors="red", linewidths=2)
        ax.set_xlabel(f"shift c   (red square: chosen, scale {chosen.get('scale', '?'):g})")
    fig.colorbar(im, ax=ax, label="clean-wrong share above threshold (lower is better)")
    ax.set_title(title or "map calibration objective, best scale per cell", fontsize=9)
    return _save(fig, path)


def plot_certified_accuracy(panels: list[dict], radii, path: str | Path, *, title: str = "") -> Path:
    """Certified accuracy (%) against the ℓ2 radius: one panel per noise level σ, one line per model.

    Each panel is ``{"sigma": σ, "curves": {name: [acc at each radius]}, "clean": {name: clean acc}}``;
    the legend gives each model's clean accuracy, so the trade-off between the two reads off one figure.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for name, curve in panel["curves"].items():
            clean = panel["clean"].get(name)
            label = name if clean is None else f"{name} (clean {100 * clean:.1f}%)"
            style = "k-o" if name == "smoothed" else "-o"
            ax.plot(list(radii), [100 * v for v in curve], style, ms=3, lw=2 if name == "smoothed" else 1.2,
                    label=label)
        ax.set_xlabel("ℓ2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_title(f"σ = {panel['sigma']:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, 70 * len(panels))), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(comparison: dict, path: str | Path, *, title: str = "") -> Path:
    """Clean (x) vs robust (y) accuracy of compared evaluations (:func:`~adasmooth.evaluation.compare.compare_reports`):
    the fixed-α curve through the base models and the fixed mixtures, every other model as a marker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    models = comparison["models"]
    points = [m for m in models if m["kind"] in ("fixed", "robust", "standard")]
    envelope = comparison.get("fixed_curve") or sorted(((m["clean"], m["robust"]) for m in points), key=lambda p: p[1])
    if points:
        ax.plot([100 * c for c, _ in envelope], [100 * r for _, r in envelope], "-", color="tab:blue",
                label="fixed-α curve (upper envelope; α=0: standard, α=1: robust)")
    hull = comparison.get("fixed_envelope")
    if hull:  # the reference of margins that are lower bounds (the curve met a part of the model's plan)
        ax.plot([100 * c for c, _ in hull], [100 * r for _, r in hull], "--", color="tab:blue", lw=1, alpha=0.6,
                label="its concave envelope (for margins that are lower bounds)")
        ax.plot([100 * m["clean"] for m in points], [100 * m["robust"] for m in points], "o", color="tab:blue", ms=4)
        for m in points:
            sh, sg = m.get("robust_scale"), m.get("standard_scale")
            label = (f"α={m['alpha']:g}" + (f", s_g={sg:g}" if sg not in (None, 1, 1.0) else "")
                     + (f", s_h={sh:g}" if sh not in (None, 1, 1.0) else ""))
            ax.annotate(label, (100 * m["clean"], 100 * m["robust"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    markers = iter(zip("P*Xv^<>hd", ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink",
                                     "tab:olive", "tab:cyan", "tab:gray")))
    for m in models:
        if m["kind"] != "other":
            continue
        marker, color = next(markers, ("P", "black"))
        interval = m.get("clean_above_interval")
        if interval is not None:  # the margin's interval, drawn around the model's clean accuracy
            lo, hi = interval
            d = m["clean_above_fixed_curve"]
            bound = "lower bound " if m.get("margin_bound") == "lower" else ""
            ax.errorbar(100 * m["clean"], 100 * m["robust"], xerr=[[100 * (d - lo)], [100 * (hi - d)]], fmt=marker,
                        ms=10, capsize=4, color=color, label=f"{m['name']} (margin {bound}{100 * d:+.2f} pts, 95% CI "
                                                 f"[{100 * lo:+.2f}, {100 * hi:+.2f}])")
        else:
            ax.plot(100 * m["clean"], 100 * m["robust"], marker, ms=10, color=color, label=m["name"])
    if comparison.get("plan_differences"):
        ax.text(0.99, 0.99, "attack plans differ: not like for like", transform=ax.transAxes, ha="right", va="top",
                fontsize=8, color="tab:red")
    rest = [100 * m["robust"] for m in models if m["kind"] != "standard"]
    std = [m for m in models if m["kind"] == "standard"]
    if rest and std and 100 * std[0]["robust"] < min(rest) - 10:  # zoom on the mixtures; the curve runs on
        ax.set_ylim(min(rest) - 3, max(rest) + 2)
        ax.set_xlim(min(100 * m["clean"] for m in models if m["kind"] != "standard") - 1, 100 * std[0]["clean"] + 0.5)
        ax.annotate(f"standard: {100 * std[0]['clean']:.2f} / {100 * std[0]['robust']:.2f} (below)",
                    (100 * std[0]["clean"], min(rest) - 3), fontsize=7, ha="right", va="bottom")
    ax.set_xlabel("clean accuracy (%), whole split")
    ax.set_ylabel(f"worst-case robust accuracy (%), {comparison['norm']} eps={comparison['eps']:g}, "
                  f"n={comparison['n_shared']}")
    ax.set_title(title or f"{comparison.get('dataset')} {comparison['split']}: trade-off on shared examples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    logger.info("wrote %s", path)
    return path
