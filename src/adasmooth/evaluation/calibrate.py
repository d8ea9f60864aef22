"""Calibrate an adaptive mixture's test-time γ bias and α range on validation data.

The attacked copies are crafted once with a gate-aware PGD against the composite at its training
settings; every candidate (b, α_lo) is then scored from cached base logits and γ_raw (a cheap, optimistic
proxy). Candidates that pass the proxy are verified by a fresh, stronger attack on the candidate itself
(gate-aware APGD-CE and APGD-T), bisecting over them in order of clean accuracy; the chosen point's
verified number is reported. Validation only: never run it on the points you report.
"""

from __future__ import annotations

import itertools
import logging

import torch

from ..attacks import gate_pgd
from ..mixing import apply_maps, mix_log_probs
from .accuracy import attack_batched

logger = logging.getLogger(__name__)


@torch.no_grad()
def _cached(model, x, device, batch_size):
    gs, hs, raws = [], [], []
    for i in range(0, len(x), batch_size):
        g, h, gamma = model.components(x[i : i + batch_size].to(device))
        gs.append(g.cpu()), hs.append(h.cpu())
        raws.append(((gamma - model.gamma_bias) / model.gamma_scale).cpu())  # = BN(γ_raw)
    return torch.cat(gs), torch.cat(hs), torch.cat(raws)


def _accuracy(model, g, h, bn_raw, y, bias, alpha_lo, alpha_hi):
    g, h = apply_maps(g, h, getattr(model, "standard_map", None), getattr(model, "robust_map", None))
    a = torch.sigmoid(model.gamma_scale * bn_raw + bias)
    a = alpha_lo + (alpha_hi - alpha_lo) * a
    mixed = mix_log_probs(g, h, a, standard_scale=model.standard_scale, robust_scale=model.robust_scale)
    return float((mixed.argmax(1) == y).float().mean())


def gate_apgd_robust_mask(model, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50, w=0.5,
                          n_target_classes=3) -> torch.Tensor:
    """Per-example robustness of an adaptive composite under the worst of the official APGD-CE and APGD-T
    on the gate-aware loss (the verification attack of :func:`calibrate_gate`)."""
    from .accuracy import correct_mask
    from .attack_specs import GateAPGDAttack

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


def robust_reference(robust, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50) -> float:
    """The robust model's accuracy under the official APGD-CE and APGD-T (3 targets): the same attack
    family and budget that :func:`calibrate_gate` verifies the composite with."""
    from .autoattack import run_autoattack

    res = run_autoattack(robust, x, y, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], seed=seed,
                         batch_size=batch_size, device=device,
                         options={"apgd.n_iter": n_iter, "apgd_targeted.n_iter": n_iter,
                                  "apgd_targeted.n_target_classes": 3})
    return res.robust_accuracy


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
) -> dict:
    """Choose ``gamma_bias`` and ``alpha_range`` for the most clean accuracy whose robust accuracy keeps
    ``keep_robust`` of ``robust_reference``; sets them on ``model`` and returns a report.

    Every grid point is scored by a cheap proxy (images crafted once, by gate-aware PGD-``steps`` at the
    model's current settings). Candidates that pass the proxy, sorted by clean accuracy, are then
    verified by a fresh attack on each candidate itself, by bisection (robustness falls as clean accuracy
    rises): ``verify(model, x, y)`` returns a per-example robust mask; the default is the worst of gate-aware
    APGD-CE and APGD-T (``verify_iters`` iterations, 3 targets, w = 0.5). The chosen point's verified number
    is reported; where nothing verifies, the most robust grid point is used and flagged.
    """
    model.eval()
    custom_verify = verify is not None
    if verify is None:
        def verify(m, xs, ys):
            return gate_apgd_robust_mask(m, xs, ys, eps=eps, device=device, batch_size=batch_size, seed=seed,
                                         n_iter=verify_iters)
    gen = torch.Generator().manual_seed(seed)
    x_adv = attack_batched(gate_pgd, model, x, y, eps=eps, w=0.5, steps=steps, generator=gen, device=device,
                           batch_size=batch_size, desc="calibration attack")
    clean = _cached(model, x, device, batch_size)
    adv = _cached(model, x_adv, device, batch_size)
    rows = []
    for b, lo in itertools.product(biases, alpha_los):
        c = _accuracy(model, *clean, y, b, lo, alpha_hi)
        r = min(c, _accuracy(model, *adv, y, b, lo, alpha_hi))
        rows.append({"gamma_bias": b, "alpha_lo": lo, "alpha_hi": alpha_hi, "clean": c, "robust_proxy": r})
    need = keep_robust * robust_reference
    candidates = sorted((r for r in rows if r["robust_proxy"] >= need), key=lambda r: -r["clean"])
    checked_rows = []

    def check(row) -> dict:
        model.gamma_bias = float(row["gamma_bias"])
        model.alpha_range = (float(row["alpha_lo"]), float(alpha_hi))
        robust = float(verify(model, x, y).float().mean())
        checked_rows.append({**row, "robust_verified": robust})
        logger.info("calibration: b=%g alpha_lo=%g clean %.3f verified robust %.3f", row["gamma_bias"],
                    row["alpha_lo"], row["clean"], robust)
        return checked_rows[-1]

    best = None
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
        best = check(max(rows, key=lambda r: (r["alpha_lo"], r["gamma_bias"])))
    model.gamma_bias = float(best["gamma_bias"])
    model.alpha_range = (float(best["alpha_lo"]), float(alpha_hi))
    return {"chosen": best, "target_met": best["robust_verified"] >= need, "fallback": fallback,
            "robust_reference": robust_reference, "keep_robust": keep_robust,
            "robust_verified": best["robust_verified"], "checked": checked_rows, "n": len(y), "eps": eps,
            "proxy_attack": {"name": "gate-pgd", "w": 0.5, "steps": steps, "seed": seed},
            "verify_attack": ("custom" if custom_verify else
                              {"name": "gate-apgd-ce + gate-apgd-t3", "w": 0.5, "n_iter": verify_iters, "seed": seed}),
            "grid": rows}
