"""Compare finished evaluations on the examples they share: the fixed-α trade-off curve against other
mixtures (nonlinear, adaptive, both), with the figures of merit and paired bootstrap intervals.

Every ``adasmooth evaluate`` JSON holds its test indices and a per-example worst-case flag, so reports
measured on different numbers of points are compared on the intersection only (the same seeded
permutation makes the first n points shared). Clean accuracy is each report's full-split accuracy.

A comparison is like for like only when every model met the same attack plan: the same PGD and
AutoAttack settings for every model, the same transfer attacks for every mixture. AutoAttack is compared
sub-attack by sub-attack with each one's effective settings, so a "custom" run of the four standard
sub-attacks at the standard settings is the standard run. Attacks that only exist for one kind of model
(the gate-aware APGD of a mixer, the surrogate of a logit map) are extra, never missing.

One difference still gives a sound answer: a model that met every attack the fixed-α curve met, and
more. Attacks only lower robust flags, so under the model's full plan every curve point could only move
to less robust accuracy, and the free-disposal concave envelope of the curve (the best clean accuracy any
mixture of its points reaches at a given robust accuracy) could only fall. The model's margin to that
envelope is then a *lower bound* of its margin under one plan for all, in every bootstrap replicate, so the
interval's ends are lower bounds too; the result marks such a margin ``"margin_bound": "lower"``. Any other
difference is refused unless ``allow_plan_mismatch`` is set, and then the result lists the differences.

The fixed-α curve is the upper envelope (the Pareto points, joined linearly) of every fixed mixture,
keyed by (α, s_g, s_h), with the standard model at α = 0 and the robust one at α = 1. A model lies
*above* it when it has more clean accuracy than the curve at its robust accuracy. The margin's interval
is a paired bootstrap: the shared attacked points (and, where the reports carry per-example clean flags,
the split's points) are resampled with replacement, the curve and every model's point recomputed each time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .autoattack import planned_sub_attacks

PLAN_TYPES = ("pgd", "autoattack", "transfer")  # attacks every model of a kind must meet
_RESULT_KEYS = ("accuracy", "seconds", "after_each_subattack", "warnings", "attacks_run")
BASE_ROLES = ("standard", "robust", "base")


@dataclass
class ComparedModel:
    name: str
    clean: float  # on the full split
    robust: float  # worst case on the shared examples
    kind: str  # "standard", "robust", "fixed", or "other"
    alpha: float | None = None
    standard_scale: float | None = None  # s_g of a fixed mixture
    robust_scale: float | None = None  # s_h of a fixed mixture
    attacks: list = field(default_factory=list)
    gap_closed: float | None = None
    robust_kept: float | None = None
    clean_above_fixed_curve: float | None = None  # clean minus the curve's clean at the same robust accuracy
    clean_above_interval: tuple[float, float] | None = None  # paired bootstrap 95% interval of the margin
    nearest_fixed: dict | None = None  # discordant robust flags against the fixed point nearest in robust accuracy
    gradient_free_gap: float | None = None  # AutoAttack after APGD-T minus after Square
    margin_bound: str | None = None  # "exact": the curve met the model's plan; "lower": a part of it (see above)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _kind(report: dict, role: str | None) -> tuple[str, float | None]:
    if role is not None:
        return role, None
    m = report.get("model", {})
    if m.get("type") == "MixedClassifier" and isinstance(m.get("alpha"), (int, float)) and "robust_map" not in m:
        return "fixed", float(m["alpha"])
    return "other", None


def _is_base(report: dict) -> bool:
    """A base model's report (``evaluate --checkpoint``): a checkpoint, no mixture type."""
    m = report.get("model", {})
    return "checkpoint" in m and "type" not in m


def fixed_curve_clean_at(curve: list[tuple[float, float]], robust: float) -> float | None:
    """Clean accuracy of the piecewise-linear curve through ``(clean, robust)`` points at ``robust``;
    None outside the robust accuracies the curve spans."""
    pts = sorted(curve, key=lambda p: p[1])
    for (c0, r0), (c1, r1) in itertools.pairwise(pts):
        if r0 <= robust <= r1:
            return c0 if r1 == r0 else c0 + (c1 - c0) * (robust - r0) / (r1 - r0)
    return None


def envelope_clean_at(curve: list[tuple[float, float]], robust: float) -> float | None:
    """The most clean accuracy that any mixture of the ``(clean, robust)`` points reaches with at least
    ``robust``: the free-disposal concave envelope (never below :func:`fixed_curve_clean_at`, and it can only
    fall when points lose robust accuracy); None above the most robust point."""
    hull = concave_envelope(curve)
    if not hull or robust > hull[-1][1]:
        return None
    if robust <= hull[0][1]:
        return hull[0][0]
    return fixed_curve_clean_at(hull, robust)


def concave_envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The corners of the upper concave hull of the Pareto ``(clean, robust)`` points, by robust accuracy."""
    hull: list[tuple[float, float]] = []
    for c, r in pareto_points(points):  # left to right in robust accuracy
        while len(hull) >= 2:
            (c0, r0), (c1, r1) = hull[-2], hull[-1]
            if (r1 - r0) * (c - c0) - (c1 - c0) * (r - r0) >= 0:  # the middle point lies on or under the chord
                hull.pop()
            else:
                break
        hull.append((c, r))
    return hull


def _curve_at(bound: str | None):
    return envelope_clean_at if bound == "lower" else fixed_curve_clean_at


def pareto_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(clean, robust)`` points no other point beats in both, sorted by robust accuracy: the upper
    envelope of a set of fixed mixtures (several logit scales make several curves; the envelope is the best)."""
    pts = sorted(set(points), key=lambda p: (-p[1], -p[0]))
    front, best_clean = [], -np.inf
    for c, r in pts:
        if c > best_clean:
            front.append((c, r))
            best_clean = c
    return sorted(front, key=lambda p: p[1])


def plan_signature(report: dict, *, base: bool) -> dict[str, dict]:
    """The attacks of ``report`` that every model of its kind must meet, by name, with their settings (no
    results). AutoAttack enters as its sub-attacks (``autoattack:apgd-ce``, ...) with their effective
    settings. Base models meet no transfer attacks (they are the models the transfer starts from)."""
    sig = {}
    for a in report.get("attacks", []):
        if a.get("type") not in PLAN_TYPES or (base and a.get("type") == "transfer"):
            continue
        if a.get("type") == "autoattack":
            subs = a.get("sub_attacks") or planned_sub_attacks(
                version=a.get("version", "standard"), attacks=a.get("attacks"), options=a.get("options"),
                norm=report.get("norm", "Linf"))
            for sub, settings in subs.items():
                key = f"autoattack:{sub}"
                while key in sig:  # the same sub-attack in a second AutoAttack row
                    key += "'"
                sig[key] = {"seed": a.get("seed"), **settings}
            continue
        sig[a["name"]] = {k: v for k, v in a.items() if k not in _RESULT_KEYS}
    return sig


def _differences(name: str, mine: dict, ref: str, theirs: dict, *, extra_ok: bool) -> tuple[list[str], list[str]]:
    """(differences, extra attacks) of ``mine`` against ``theirs``; extras count as differences unless
    ``extra_ok``."""
    out, extra = [], []
    for key in sorted(set(mine) | set(theirs)):
        if key not in mine:
            out.append(f"{name!r} lacks {key}, which {ref!r} met")
        elif key not in theirs:
            (extra if extra_ok else out).append(key if extra_ok else f"{name!r} met {key}, which {ref!r} did not")
        elif mine[key] != theirs[key]:
            diff = sorted(k for k in set(mine[key]) | set(theirs[key]) if mine[key].get(k) != theirs[key].get(k))
            out.append(f"{name!r} and {ref!r} ran {key} with different settings ({', '.join(diff)})")
    return out, extra


def _without_transfer(sig: dict) -> dict:
    return {k: v for k, v in sig.items() if v.get("type") != "transfer"}


def plan_relations(reports: dict[str, dict], roles: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """How the reports' attack plans relate: (differences that break the comparison, one line each; for
    each model off the curve that met every curve point's plan and more, the extra attacks).

    Every model off the curve must have met each curve point's plan (a base model's less the transfer
    attacks), with the same settings: equal plans compare exactly, larger ones give a lower bound. Without
    such models, the curve's points must meet one plan, the one most fixed mixtures met."""
    sigs = {name: plan_signature(r, base=roles[name] in BASE_ROLES) for name, r in reports.items()}
    curve = [n for n in reports if roles[n] in BASE_ROLES or roles[n] == "fixed"]
    others = [n for n in reports if n not in curve]
    out, extras = [], {}
    if not others or not curve:
        pool = [n for n in curve if roles[n] == "fixed"] or curve or others
        ref = max(pool, key=lambda n: sum(sigs[m] == sigs[n] for m in pool))  # first of the most common
        for name in curve or others:
            if name != ref:
                theirs = _without_transfer(sigs[ref]) if roles[name] in BASE_ROLES else sigs[ref]
                out += _differences(name, sigs[name], ref, theirs, extra_ok=False)[0]
        return out, extras
    for model in others:
        mine_diffs, seen = [], []
        for point in curve:
            mine = _without_transfer(sigs[model]) if roles[point] in BASE_ROLES else sigs[model]
            diffs, extra = _differences(model, mine, point, sigs[point], extra_ok=True)
            mine_diffs += diffs
            seen += [k for k in extra if k not in seen]
        out += mine_diffs
        if seen and not mine_diffs:
            extras[model] = seen
    return out, extras


def plan_differences(reports: dict[str, dict], roles: dict[str, str]) -> list[str]:
    """The differences of :func:`plan_relations` that break the comparison (empty: it holds)."""
    return plan_relations(reports, roles)[0]


def _check_reports(reports: dict[str, dict]) -> None:
    first_name, first = next(iter(reports.items()))
    for name, r in reports.items():
        missing = [k for k in ("indices", "robust_per_example", "eps", "norm", "split") if k not in r]
        if missing:
            raise ValueError(f"report {name!r} lacks {missing}: use the JSON that `adasmooth evaluate` writes per model")
        for k in ("eps", "norm", "split", "dataset"):
            if r.get(k) != first.get(k):
                raise ValueError(f"reports differ in {k}: {name!r} has {r.get(k)!r}, {first_name!r} has "
                                 f"{first.get(k)!r}; only evaluations of one threat model on one split compare")


def _fixed_key(report: dict, alpha: float) -> tuple[float, float, float]:
    m = report.get("model", {})
    return alpha, float(m.get("standard_scale", 1.0)), float(m.get("robust_scale", 1.0))


def compare_reports(reports: dict[str, dict], *, standard: str | None = None, robust: str | None = None,
                    allow_plan_mismatch: bool = False, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """``reports`` maps a name to a loaded ``evaluate`` JSON. ``standard`` / ``robust`` name the base
    models' reports (the robust one is also the α = 1 end of the fixed-α curve). Reports whose attack
    plans differ are refused unless ``allow_plan_mismatch``; ``n_bootstrap`` replicates (0: none) give the
    paired 95% interval of each model's margin to the fixed-α curve."""
    if len(reports) < 2:
        raise ValueError("compare needs at least two evaluation reports")
    if n_bootstrap < 0:
        raise ValueError(f"the number of bootstrap replicates must be >= 0, got {n_bootstrap}")
    _check_reports(reports)
    for role in (standard, robust):
        if role is not None and role not in reports:
            raise ValueError(f"{role!r} is not among the reports ({', '.join(reports)})")
    roles = {name: "standard" if name == standard else "robust" if name == robust else _kind(r, None)[0]
             for name, r in reports.items()}
    roles = {name: "base" if role == "other" and _is_base(reports[name]) else role for name, role in roles.items()}
    differences, extras = plan_relations(reports, roles)
    if differences and not allow_plan_mismatch:
        raise ValueError("the reports met different attack plans, so they do not compare like for like: "
                         + "; ".join(differences) + ". Evaluate every model with the same plan, or pass "
                         "--allow-different-plans to compare anyway (the result then lists the differences)")
    shared = sorted(set.intersection(*(set(r["indices"]) for r in reports.values())))
    if not shared:
        raise ValueError("the reports share no test examples: evaluate them with the same seed")
    models, flags, keys = [], {}, {}
    for name, r in reports.items():
        kind, alpha = _kind(r, roles[name] if roles[name] in ("standard", "robust") else None)
        pos = {i: f for i, f in zip(r["indices"], r["robust_per_example"])}
        flags[name] = np.array([pos[i] for i in shared], dtype=np.float64)
        model = r.get("model", {})
        if kind == "fixed":
            key = _fixed_key(r, alpha)
            if key in keys:
                raise ValueError(f"{name!r} and {keys[key]!r} are the same fixed mixture (alpha {key[0]:g}, s_g "
                                 f"{key[1]:g}, s_h {key[2]:g}): give each mixture one report")
            keys[key] = name
        models.append(ComparedModel(
            name=name, clean=float(r.get("clean_accuracy_full_split", r["clean_accuracy"])),
            robust=float(flags[name].mean()), kind=kind, alpha={"robust": 1.0, "standard": 0.0}.get(kind, alpha),
            standard_scale=model.get("standard_scale") if kind == "fixed" else None,
            robust_scale=model.get("robust_scale") if kind == "fixed" else None,
            attacks=[a["name"] for a in r.get("attacks", [])], gradient_free_gap=_gradient_free_gap(r)))
    by = {m.name: m for m in models}
    on_curve = [m.name for m in models if m.kind in ("fixed", "robust", "standard")]
    curve = pareto_points([(by[n].clean, by[n].robust) for n in on_curve])
    for m in models:
        if standard and robust and m.kind not in BASE_ROLES:
            s, b = by[standard], by[robust]
            gap = s.clean - b.clean
            m.gap_closed = (m.clean - b.clean) / gap if gap > 0 else None
            m.robust_kept = m.robust / b.robust if b.robust > 0 else None
        if m.kind == "other" and len(curve) >= 2:
            m.margin_bound = None if differences else "lower" if m.name in extras else "exact"
            at = _curve_at(m.margin_bound)(curve, m.robust)
            m.clean_above_fixed_curve = None if at is None else m.clean - at
            m.nearest_fixed = _nearest_fixed(m, [by[n] for n in on_curve if by[n].kind == "fixed"], flags)
    clean_flags = _clean_flags(reports)
    boot = None
    if n_bootstrap and len(on_curve) >= 2:
        boot = _bootstrap(models, on_curve, flags, clean_flags, n_bootstrap, seed)
    return {"n_shared": len(shared), "eps": first_of(reports, "eps"), "norm": first_of(reports, "norm"),
            "split": first_of(reports, "split"), "dataset": first_of(reports, "dataset"),
            "models": [m.to_dict() for m in models], "fixed_curve": curve,
            "fixed_envelope": concave_envelope(curve) if extras and not differences else None,
            "plan_differences": differences, "plan_extras": extras,
            "like_for_like": not differences and not extras, "bootstrap": boot}


def _gradient_free_gap(report: dict) -> float | None:
    for row in report.get("attacks", []):
        after = row.get("after_each_subattack") or {}
        if "apgd-t" in after and "square" in after:
            return float(after["apgd-t"] - after["square"])
    return None


def first_of(reports: dict[str, dict], key: str):
    return next(iter(reports.values())).get(key)


def _nearest_fixed(model: ComparedModel, fixed: list[ComparedModel], flags: dict) -> dict | None:
    """Discordant pairs against the fixed mixture nearest in robust accuracy, and the exact sign test."""
    if not fixed:
        return None
    near = min(fixed, key=lambda f: (abs(f.robust - model.robust), -f.clean))
    mine, theirs = flags[model.name], flags[near.name]
    only_model, only_fixed = int(((mine == 1) & (theirs == 0)).sum()), int(((mine == 0) & (theirs == 1)).sum())
    from scipy.stats import binomtest  # imported here: scipy.stats takes seconds to import, and only this needs it

    p = binomtest(only_model, only_model + only_fixed).pvalue if only_model + only_fixed else 1.0
    return {"name": near.name, "robust_only_model": only_model, "robust_only_fixed": only_fixed,
            "sign_test_p": float(p)}


def _clean_flags(reports: dict[str, dict]) -> dict[str, np.ndarray] | None:
    """Per-example clean flags over the whole split, when every report carries them for the same split."""
    if not all("clean_per_example_full_split" in r for r in reports.values()):
        return None
    out = {n: np.asarray(r["clean_per_example_full_split"], dtype=np.float64) for n, r in reports.items()}
    return out if len({len(v) for v in out.values()}) == 1 else None


def _resampled_means(flags: dict[str, np.ndarray], names: list[str], n_boot: int, rng) -> np.ndarray:
    """(n_boot, len(names)) means of each model's flags under the same resampling of the points."""
    mat = np.stack([flags[n] for n in names])  # models x points
    n = mat.shape[1]
    out = np.empty((n_boot, len(names)))
    for start in range(0, n_boot, 200):
        stop = min(n_boot, start + 200)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)
        out[start:stop] = counts @ mat.T / n
    return out


def _bootstrap(models, on_curve, flags, clean_flags, n_boot, seed) -> dict:
    """Paired bootstrap of each non-fixed model's margin to the fixed-α curve (95% percentile interval)."""
    rng = np.random.default_rng(seed)
    names = [m.name for m in models]
    robust = _resampled_means(flags, names, n_boot, rng)
    if clean_flags is not None:
        clean = _resampled_means(clean_flags, names, n_boot, rng)
    else:  # the split's clean accuracies, held fixed: the interval covers the attacked points' noise only
        clean = np.tile([m.clean for m in models], (n_boot, 1))
    col = {n: i for i, n in enumerate(names)}
    summary = {}
    for m in models:
        if m.kind != "other":
            continue
        margins, curve_at = [], _curve_at(m.margin_bound)
        for b in range(n_boot):
            curve = pareto_points([(clean[b, col[n]], robust[b, col[n]]) for n in on_curve])
            at = curve_at(curve, robust[b, col[m.name]])
            if at is not None:
                margins.append(clean[b, col[m.name]] - at)
        if len(margins) >= 0.9 * n_boot:
            lo, hi = np.percentile(margins, [2.5, 97.5])
            m.clean_above_interval = (float(lo), float(hi))
        summary[m.name] = {"replicates_on_curve": len(margins)}
    return {"replicates": n_boot, "seed": seed, "clean_resampled": clean_flags is not None,
            "level": 0.95, "models": summary}


__all__ = ["ComparedModel", "compare_reports", "concave_envelope", "envelope_clean_at", "fixed_curve_clean_at", "pareto_points",
           "plan_differences", "plan_relations", "plan_signature"]
