"""Calibrate an adaptive mixture's test-time γ bias and α range on validation data.

The attacked copies are crafted once with a gate-aware PGD against the composite at its training
settings; every candidate (b, α_lo) is then scored from cached base logits and γ_raw (a cheap, optimistic
proxy). Candidates that pass the proxy are re-attacked afresh, most clean-accurate first, and the first
that still meets the target is chosen; its re-attacked number is reported. Validation only.
"""

from __future__ import annotations

import itertools
import logging

import torch

from ..attacks import gate_pgd
from ..mixing import mix_log_probs
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
    a = torch.sigmoid(model.gamma_scale * bn_raw + bias)
    a = alpha_lo + (alpha_hi - alpha_lo) * a
    mixed = mix_log_probs(g, h, a, standard_scale=model.standard_scale, robust_scale=model.robust_scale)
    return float((mixed.argmax(1) == y).float().mean())


def calibrate_gate(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    robust_reference: float,
    keep_robust: float = 0.97,
    biases=(0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.5),
    alpha_los=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9),
    alpha_hi: float = 1.0,
    steps: int = 20,
    device="cpu",
    batch_size: int = 250,
    seed: int = 0,
    max_checks: int = 12,
) -> dict:
    """Choose ``gamma_bias`` and ``alpha_range`` for the most clean accuracy whose robust accuracy (gate-aware
    PGD, w = 0.5) keeps ``keep_robust`` of ``robust_reference``; sets them on ``model`` and returns a report."""
    model.eval()
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
    # The proxy scores every candidate against images crafted for another setting, so it is optimistic
    # (a fresh attack on the candidate can do far worse). Re-attack candidates in order of clean accuracy
    # and keep the first whose own attack leaves the target met.
    need = keep_robust * robust_reference
    candidates = sorted((r for r in rows if r["robust_proxy"] >= need), key=lambda r: -r["clean"])[:max_checks]
    best, checked_rows = None, []
    for i, cand in enumerate(candidates):
        model.gamma_bias = float(cand["gamma_bias"])
        model.alpha_range = (float(cand["alpha_lo"]), float(alpha_hi))
        x_check = attack_batched(gate_pgd, model, x, y, eps=eps, w=0.5, steps=steps,
                                 generator=torch.Generator().manual_seed(seed + 1 + i), device=device,
                                 batch_size=batch_size, desc="re-attack candidate")
        robust = min(cand["clean"], _accuracy(model, *_cached(model, x_check, device, batch_size), y,
                                              model.gamma_bias, *model.alpha_range))
        checked_rows.append({**cand, "robust_reattacked": robust})
        if robust >= need:
            best = checked_rows[-1]
            break
    if best is None:  # nothing verified: fall back to the most robust setting in the grid
        best = max(rows, key=lambda r: (r["alpha_lo"], r["gamma_bias"]))
        model.gamma_bias = float(best["gamma_bias"])
        model.alpha_range = (float(best["alpha_lo"]), float(alpha_hi))
        x_check = attack_batched(gate_pgd, model, x, y, eps=eps, w=0.5, steps=steps,
                                 generator=torch.Generator().manual_seed(seed), device=device,
                                 batch_size=batch_size, desc="re-attack fallback")
        best = {**best, "robust_reattacked": min(best["clean"], _accuracy(
            model, *_cached(model, x_check, device, batch_size), y, model.gamma_bias, *model.alpha_range))}
    model.gamma_bias = float(best["gamma_bias"])
    model.alpha_range = (float(best["alpha_lo"]), float(alpha_hi))
    return {"chosen": best, "target_met": best["robust_reattacked"] >= need, "robust_reference": robust_reference,
            "keep_robust": keep_robust, "robust_reattacked": best["robust_reattacked"], "checked": checked_rows,
            "n": len(y), "eps": eps,
            "attack": {"name": "gate-pgd", "w": 0.5, "steps": steps, "seed": seed}, "grid": rows}
