"""Certified radii of an α-mixture of a standard classifier g and a robust classifier h (α ≥ 1/2).

Let p = (1−α)·g(x) + α·h(x) with both terms probability vectors. Whatever g says, class A keeps the
mixture's argmax at x' as long as α·h_A(x') > α·h_i(x') + 1 − α for every i ≠ A. Two ways to know that on
a ball around x (design.md, "Certified radii of the mixture"):

* Lipschitz: if every h_y − h_i is L-Lipschitz in the attack norm and m_h(x) = h_y(x) − max_{i≠y} h_i(x),
  the margin stays above (1−α)/α within ``r = (m_h(x) − (1−α)/α) / L``.
* Randomized smoothing (ℓ2): if h is a Gaussian-smoothed classifier with noise σ, x ↦ Φ⁻¹(E[f(x+δ)]) is
  1/σ-Lipschitz for every f with values in [0, 1] (Salman et al. 2019). Applied to α·1[A] and
  α·1[B] + 1 − α this gives ``r = (σ/2)·[Φ⁻¹(α·p_A) − Φ⁻¹(α·p_B + 1 − α)]``; α = 1 with p_B = 1 − p_A is
  Cohen et al.'s σ·Φ⁻¹(p_A).

Both hold for an input-dependent α(x) as long as α(x) ≥ α_min on the ball: pass α_min.
Below α = 1/2 no certificate exists (the standard model's weight 1 − α exceeds any margin α·(h_A − h_B)).
"""

from __future__ import annotations

import numpy as np
import torch


def check_alpha_for_certificate(alpha) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a > 1.0):
        raise ValueError(f"alpha must lie in [1/2, 1], got {alpha}")
    if np.any(a < 0.5):
        raise ValueError(
            f"a certificate needs alpha >= 1/2, got {float(a.min()):g}: below it the standard model's weight "
            "1 - alpha is larger than any margin alpha * (h_A - h_B) the robust model can give, so the "
            "standard model alone can always flip the prediction"
        )
    return a


def _as_numpy(v):
    if torch.is_tensor(v):
        return v.detach().cpu().double().numpy(), v
    return np.asarray(v, dtype=np.float64), None


def _like(out: np.ndarray, ref):
    if ref is not None:
        return torch.as_tensor(out, dtype=ref.dtype if ref.is_floating_point() else torch.float64, device=ref.device)
    return out if out.ndim else float(out)


def lipschitz_radius(margin, alpha, lipschitz: float):
    """Certified radius ``(m − (1−α)/α) / L`` elementwise; 0 where it is not positive.

    ``margin`` is the robust model's probability margin h_y(x) − max_{i≠y} h_i(x) for the label y (negative
    when h is wrong), ``lipschitz`` the Lipschitz constant L of every difference h_y − h_i in the attack's
    norm. Tensors in give a tensor out (same device), arrays or floats give arrays or floats.
    """
    if not float(lipschitz) > 0:
        raise ValueError(f"the Lipschitz constant must be > 0, got {lipschitz}")
    m, ref = _as_numpy(margin)
    a = check_alpha_for_certificate(alpha)
    r = (m - (1.0 - a) / a) / float(lipschitz)
    return _like(np.maximum(r, 0.0), ref)


def smoothing_radius(p_a, p_b, alpha, sigma: float):
    """Certified ℓ2 radius ``(σ/2)·[Φ⁻¹(α·p_A) − Φ⁻¹(α·p_B + 1 − α)]`` elementwise; 0 where not positive.

    ``p_a`` must be a lower bound on the smoothed probability of the predicted class and ``p_b`` an upper
    bound on every other class's (e.g. from :func:`adasmooth.certify.bounds.mixture_bounds`) for the radius
    to be a certificate; point estimates give an estimate only.
    """
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    pa, ref = _as_numpy(p_a)
    pb, ref_b = _as_numpy(p_b)
    ref = ref if ref is not None else ref_b
    a = check_alpha_for_certificate(alpha)
    if np.any((pa < 0) | (pa > 1) | (pb < 0) | (pb > 1)):
        raise ValueError("p_a and p_b must be probabilities in [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        from scipy.stats import norm  # scipy.stats takes seconds to import: only where it is used

        r = 0.5 * float(sigma) * (norm.ppf(a * pa) - norm.ppf(a * pb + 1.0 - a))
    r = np.where(np.isnan(r), 0.0, r)  # inf − inf: no margin at all
    return _like(np.maximum(r, 0.0), ref)
