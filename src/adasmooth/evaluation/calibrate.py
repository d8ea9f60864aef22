"""Calibrate an adaptive mixture's test-time γ bias and α range on validation data.

The attacked copies are crafted once with a gate-aware PGD against the composite at its training
settings; every candidate (b, α_lo) is then scored from cached base logits and γ_raw, with no further
forward passes. The chosen candidate is re-attacked afresh and that number is reported. Validation only.
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
    ok = [r for r in rows if r["robust_proxy"] >= keep_robust * robust_reference]
    best = max(ok or rows, key=lambda r: (r["clean"], r["robust_proxy"]) if ok else (r["robust_proxy"], r["clean"]))
    model.gamma_bias = float(best["gamma_bias"])
    model.alpha_range = (float(best["alpha_lo"]), float(alpha_hi))
    x_check = attack_batched(gate_pgd, model, x, y, eps=eps, w=0.5, steps=steps,
                             generator=torch.Generator().manual_seed(seed + 1), device=device,
                             batch_size=batch_size, desc="re-attack chosen")
    checked = _accuracy(model, *_cached(model, x_check, device, batch_size), y, model.gamma_bias, *model.alpha_range)
    return {"chosen": best, "target_met": bool(ok), "robust_reference": robust_reference, "keep_robust": keep_robust,
            "robust_reattacked": min(best["clean"], checked), "n": len(y), "eps": eps,
            "attack": {"name": "gate-pgd", "w": 0.5, "steps": steps, "seed": seed}, "grid": rows}
