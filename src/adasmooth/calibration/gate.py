"""Calibrate an adaptive mixture's test-time γ scale, γ bias and α range on validation data.

The attacked copies are crafted once with a gate-aware PGD against the composite at its training settings;
every candidate (k, b, α_lo, α_hi) is then scored from cached base logits and γ_raw (a cheap, optimistic
proxy). Candidates that pass the proxy are verified by fresh attacks on the candidate itself, in order of
clean accuracy (ties: the more robust proxy first): ``strategy="scan"`` checks them one by one until one
holds, against a set of attacks (gate-aware APGD-CE for several w, gate-aware APGD-T, transfer from the
standard model), so no single attack is tuned to; ``strategy="floor"`` takes, for each floor α_lo, its most
clean-accurate candidate and bisects over the floors against the same set (robustness rises with the floor,
whatever else is set: a few checks where a scan of an optimistic proxy's ranking can spend a dozen on one
floor); ``strategy="bisect"`` (the older rule) bisects, assuming robustness falls as clean accuracy rises,
against gate-aware APGD-CE and APGD-T at w = 0.5. A candidate that failed its check is never chosen; every
checked candidate is recorded. Validation only: never run it on the points you report.

A :class:`~adasmooth.state.CalibrationJournal` keeps the finished checks on disk, so a calibration killed part-way (each
check of a large composite is many minutes of attacks) resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging

import torch
from tqdm.auto import tqdm

from ..attacks import gate_pgd
from ..evaluation.accuracy import attack_batched, correct_mask
from ..evaluation.attack_specs import GateAPGDAttack, TransferAttack
from ..evaluation.autoattack import SUB_ATTACKS, run_autoattack
from ..mixing import apply_maps, mix_log_probs
from ..state import CalibrationJournal

logger = logging.getLogger(__name__)


@torch.no_grad()
def _cached(model, x, device, batch_size):
    gs, hs, raws = [], [], []
    for i in range(0, len(x), batch_size):
        g, h, gamma = model.components(x[i : i + batch_size].to(device))
        gs.append(g.cpu()), hs.append(h.cpu())
        raws.append(((gamma - model.gamma_bias) / model.gamma_scale).cpu())  # = BN(γ_raw)
    return torch.cat(gs), torch.cat(hs), torch.cat(raws)


def _accuracy(model, g, h, bn_raw, y, bias, alpha_lo, alpha_hi, scale=None):
    g, h = apply_maps(g, h, getattr(model, "standard_map", None), getattr(model, "robust_map", None))
    a = torch.sigmoid((model.gamma_scale if scale is None else scale) * bn_raw + bias)
    a = alpha_lo + (alpha_hi - alpha_lo) * a
    mixed = mix_log_probs(g, h, a, standard_scale=model.standard_scale, robust_scale=model.robust_scale)
    return float((mixed.argmax(1) == y).float().mean())


def gate_apgd_robust_mask(model, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50, w=0.5,
                          n_target_classes=3) -> torch.Tensor:
    """Per-example robustness of an adaptive composite under the worst of the official APGD-CE and APGD-T
    on the gate-aware loss (the verification attack of :func:`calibrate_gate`)."""

    robust = correct_mask(model, x, y, device=device, batch_size=batch_size)
    for attack in (GateAPGDAttack("ce", w, n_iter, seed=seed),
                   GateAPGDAttack("dlr-targeted", w, n_iter, n_target_classes, seed=seed)):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        out = attack.robust_mask(model, x[idx], y[idx], eps=eps, norm="Linf", device=device, batch_size=batch_size,
                                 progress=False)
        robust[idx[~out.robust.cpu()]] = False
    return robust


def gate_attack_set_robust_mask(model, x, y, *, eps, standard=None, device="cpu", batch_size=250, seed=0,
                                n_iter=50, weights=(0.0, 0.5, 1.0), n_target_classes=3,
                                autoattack=(), square_queries: int = 5000,
                                stop_below: float | None = None, progress: bool = False,
                                desc: str = "") -> torch.Tensor:
    """Per-example robustness of an adaptive composite under a set of attacks aimed at it: gate-aware
    APGD-CE for each w in ``weights``, gate-aware APGD-T (w = 0.5), PGD transferred from ``standard``
    (when given), then the official AutoAttack sub-attacks in ``autoattack`` (e.g. ``("fab-t", "square")``
    at AutoAttack's standard settings, Square with ``square_queries`` queries), each run on the examples
    still robust. Square needs no gradient: it finds what a gate that masks gradients hides from the others.
    With ``stop_below``, stops as soon as the robust share falls below it (the verdict cannot recover).
    ``progress`` shows one bar step per attack."""

    bad = [a for a in autoattack if a not in SUB_ATTACKS]
    if bad:
        raise ValueError(f"unknown AutoAttack sub-attacks {bad}; known: {', '.join(SUB_ATTACKS)}")

    robust = correct_mask(model, x, y, device=device, batch_size=batch_size)
    attacks = [GateAPGDAttack("ce", w, n_iter, seed=seed) for w in weights]
    attacks.append(GateAPGDAttack("dlr-targeted", 0.5, n_iter, n_target_classes, seed=seed))
    if standard is not None:
        attacks.append(TransferAttack(standard, "standard", steps=n_iter, seed=seed))
    bar = tqdm(attacks, desc=desc or "verification", unit="attack", leave=False, disable=not progress)
    for attack in bar:
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0 or (stop_below is not None and float(robust.float().mean()) < stop_below):
            break
        bar.set_postfix_str(f"{attack.name} on {len(idx)} ex, robust so far {float(robust.float().mean()):.3f}")
        out = attack.robust_mask(model, x[idx], y[idx], eps=eps, norm="Linf", device=device, batch_size=batch_size,
                                 progress=False)
        robust[idx[~out.robust.cpu()]] = False
    for name in autoattack:  # one official sub-attack at a time, so that the early stop applies between them
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0 or (stop_below is not None and float(robust.float().mean()) < stop_below):
            break
        res = run_autoattack(model, x[idx], y[idx], eps=eps, version="custom", attacks=[name], seed=seed,
                             batch_size=batch_size, device=device,
                             options={"square.n_queries": int(square_queries)} if name == "square" else None)
        robust[idx[~res.robust.cpu()]] = False
    return robust


def robust_reference(robust, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50, autoattack=(),
                     square_queries: int = 5000) -> float:
    """The robust model's accuracy under the official APGD-CE and APGD-T (3 targets), then the official
    AutoAttack sub-attacks in ``autoattack`` (Square with ``square_queries``): the attack family and budget
    that :func:`calibrate_gate` verifies the composite with, so that "robust kept" compares like with like."""

    bad = [a for a in autoattack if a not in SUB_ATTACKS]
    if bad:
        raise ValueError(f"autoattack takes AutoAttack sub-attacks ({', '.join(SUB_ATTACKS)}), got {bad}")
    extra = [a for a in autoattack if a not in ("apgd-ce", "apgd-t")]
    options = {"apgd.n_iter": n_iter, "apgd_targeted.n_iter": n_iter, "apgd_targeted.n_target_classes": 3}
    if "square" in extra:
        options["square.n_queries"] = int(square_queries)
    res = run_autoattack(robust, x, y, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t", *extra], seed=seed,
                         batch_size=batch_size, device=device, options=options)
    return res.robust_accuracy


def rank_candidates(rows: list[dict], need: float) -> list[dict]:
    """Grid points whose proxy robust accuracy reaches ``need``, most clean-accurate first; equal clean
    accuracy (common: it moves in steps of one example) goes to the more robust proxy, not to grid order.

    On a few hundred points many settings tie on clean accuracy: at a floor α_lo, α_hi = 1 usually costs no
    clean example over α_hi = 0.95 (clean inputs sit near the floor) while it raises α on attacked ones.
    """
    return sorted((r for r in rows if r["robust_proxy"] >= need), key=lambda r: (-r["clean"], -r["robust_proxy"]))


def calibrate_gate(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    robust_reference: float,
    keep_robust: float = 0.97,
    biases=(0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.5),
    alpha_los=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98),  # the top ones for sharp maps (adaptive + nonlinear)
    alpha_hi: float = 1.0,
    steps: int = 20,
    device="cpu",
    batch_size: int = 250,
    seed: int = 0,
    verify_iters: int = 50,
    verify=None,
    strategy: str = "bisect",
    gamma_scales=None,
    alpha_his=None,
    max_checks: int = 12,
    autoattack=(),
    square_queries: int = 5000,
    progress: bool = False,
    journal: CalibrationJournal | None = None,
) -> dict:
    """Choose ``gamma_bias`` and ``alpha_range`` for the most clean accuracy whose robust accuracy keeps
    ``keep_robust`` of ``robust_reference``; sets them on ``model`` and returns a report.

    Every grid point (``gamma_scales`` × ``biases`` × ``alpha_los`` × ``alpha_his``; the scale defaults to
    the model's, α_hi to ``alpha_hi``) is scored by a cheap proxy (images crafted once, by gate-aware
    PGD-``steps`` at the model's current settings). Candidates that pass the proxy, sorted by clean
    accuracy, are then verified by fresh attacks on each candidate itself: ``verify(model, x, y)`` returns
    a per-example robust mask. ``strategy="scan"`` checks candidates in order until one holds (at most
    ``max_checks``), ``"floor"`` bisects over the floors α_lo (each floor's most clean-accurate
    candidate), both by default against :func:`gate_attack_set_robust_mask` (with the model's standard
    model for transfer and the official ``autoattack`` sub-attacks after it, Square with ``square_queries``);
    ``"bisect"`` bisects against the worst of gate-aware APGD-CE and APGD-T
    (``verify_iters`` iterations, 3 targets, w = 0.5). The chosen point's verified number is reported;
    where nothing verifies, the most robust grid point is checked, used and flagged. ``progress`` shows
    the proxy attack and each check (candidate, attack, examples) as progress bars. With ``journal``,
    checks already recorded there are not attacked again, and each new one is recorded as it finishes.
    """
    if strategy not in ("bisect", "scan", "floor"):
        raise ValueError(f"strategy must be bisect, scan or floor, got {strategy!r}")
    model.eval()
    custom_verify = verify is not None
    need = keep_robust * robust_reference
    if verify is None and strategy in ("scan", "floor"):
        def verify(m, xs, ys, stop_below=need):  # a failing candidate's number is where its check stopped
            return gate_attack_set_robust_mask(m, xs, ys, eps=eps, standard=m.standard, device=device,
                                               batch_size=batch_size, seed=seed, n_iter=verify_iters,
                                               autoattack=autoattack, square_queries=square_queries,
                                               stop_below=stop_below, progress=progress,
                                               desc=f"calibration check {len(checked_rows) + 1}")
    elif verify is None:
        def verify(m, xs, ys):
            return gate_apgd_robust_mask(m, xs, ys, eps=eps, device=device, batch_size=batch_size, seed=seed,
                                         n_iter=verify_iters)
    gen = torch.Generator().manual_seed(seed)
    x_adv = attack_batched(gate_pgd, model, x, y, eps=eps, w=0.5, steps=steps, generator=gen, device=device,
                           batch_size=batch_size, desc="calibration attack", progress=progress)
    clean = _cached(model, x, device, batch_size)
    adv = _cached(model, x_adv, device, batch_size)
    rows = []
    scales = tuple(gamma_scales) if gamma_scales else (model.gamma_scale,)
    for k, b, lo, hi in itertools.product(scales, biases, alpha_los, tuple(alpha_his or (alpha_hi,))):
        if lo > hi:
            continue
        c = _accuracy(model, *clean, y, b, lo, hi, scale=k)
        r = min(c, _accuracy(model, *adv, y, b, lo, hi, scale=k))
        rows.append({"gamma_scale": k, "gamma_bias": b, "alpha_lo": lo, "alpha_hi": hi, "clean": c, "robust_proxy": r})
    candidates = rank_candidates(rows, need)
    checked_rows = []

    def apply(row) -> None:
        model.gamma_scale = float(row["gamma_scale"])
        model.gamma_bias = float(row["gamma_bias"])
        model.alpha_range = (float(row["alpha_lo"]), float(row["alpha_hi"]))

    def check(row, **full) -> dict:
        apply(row)
        name = "check " + json.dumps({**{k: row[k] for k in ("gamma_scale", "gamma_bias", "alpha_lo", "alpha_hi")},
                                      **full}, sort_keys=True)
        robust = journal.get(name) if journal is not None else None
        if robust is None:
            robust = float(verify(model, x, y, **full).float().mean())
            if journal is not None:
                journal.put(name, robust)
        checked_rows.append({**row, "robust_verified": robust, "passed": robust >= need})
        logger.info("calibration: k=%g b=%g alpha=[%g, %g] clean %.3f verified robust %.3f", row["gamma_scale"],
                    row["gamma_bias"], row["alpha_lo"], row["alpha_hi"], row["clean"], robust)
        return checked_rows[-1]

    best = None
    if strategy == "scan":  # most clean-accurate first; the first that holds is the answer
        for row in candidates[:max_checks]:
            if check(row)["passed"]:
                best = checked_rows[-1]
                break
    elif strategy == "floor":  # per α floor its most clean-accurate candidate; bisect over the floors
        per_floor = {}
        for row in candidates:  # ranked: the first row of each floor is its best
            per_floor.setdefault(row["alpha_lo"], row)
        ladder = [per_floor[f] for f in sorted(per_floor)]  # lowest floor (most clean-accurate) first
        lo_i, hi_i = 0, len(ladder) - 1
        while lo_i <= hi_i:
            mid = (lo_i + hi_i) // 2
            row = check(ladder[mid])
            if row["passed"]:
                best, hi_i = row, mid - 1
            else:
                lo_i = mid + 1
    else:
        lo_i, hi_i = 0, len(candidates) - 1  # candidates[0] is the most clean-accurate
        while lo_i <= hi_i:
            mid = (lo_i + hi_i) // 2
            row = check(candidates[mid])
            if row["robust_verified"] >= need:
                best, hi_i = row, mid - 1
            else:
                lo_i = mid + 1
    fallback = best is None
    if fallback:  # nothing verified: the most robust setting in the grid
        logger.warning("calibration: no candidate kept %.1f%% robust accuracy under the verification attacks; "
                       "falling back to the most robust grid point", 100 * need)
        full = {"stop_below": None} if strategy != "bisect" and not custom_verify else {}  # its true number
        best = check(max(rows, key=lambda r: (r["alpha_lo"], r["alpha_hi"], r["gamma_bias"])), **full)
    apply(best)
    return {"chosen": best, "target_met": best["robust_verified"] >= need, "fallback": fallback,
            "robust_reference": robust_reference, "keep_robust": keep_robust,
            "robust_verified": best["robust_verified"], "checked": checked_rows, "n": len(y), "eps": eps,
            "proxy_attack": {"name": "gate-pgd", "w": 0.5, "steps": steps, "seed": seed},
            "strategy": strategy,
            "verify_attack": ("custom" if custom_verify else
                              {"name": "gate-apgd-ce + gate-apgd-t3", "w": 0.5, "n_iter": verify_iters, "seed": seed}
                              if strategy == "bisect" else
                              {"name": "gate-apgd-ce (w 0, 0.5, 1) + gate-apgd-t3 (w 0.5) + transfer from standard"
                                       + "".join(f" + {a} (official)" for a in autoattack),
                               "n_iter": verify_iters, "seed": seed,
                               **({"square_queries": square_queries} if "square" in autoattack else {})}),
            "grid": rows}
