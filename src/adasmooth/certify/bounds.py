"""Exact (Clopper–Pearson) binomial confidence bounds and the sample sizes they need."""

from __future__ import annotations

import math

import numpy as np


def check_delta(delta: float) -> None:
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta (the failure probability of a certificate) must lie in (0, 1), got {delta}")


def clopper_pearson_lower(successes, trials, delta: float):
    """One-sided lower bound on a binomial probability: P(p >= bound) >= 1 - delta.

    ``successes`` may be an int or an array; ``trials`` an int or a matching array. 0 successes give 0.
    """
    check_delta(delta)
    k = np.asarray(successes, dtype=np.float64)
    n = np.broadcast_to(np.asarray(trials, dtype=np.float64), k.shape)
    _check_counts(k, n)
    with np.errstate(invalid="ignore"):
        from scipy.stats import beta  # scipy.stats takes seconds to import: only where it is used

        out = beta.ppf(delta, k, n - k + 1)
    out = np.where(k == 0, 0.0, out)
    return out if out.ndim else float(out)


def clopper_pearson_upper(successes, trials, delta: float):
    """One-sided upper bound on a binomial probability: P(p <= bound) >= 1 - delta. n successes give 1."""
    check_delta(delta)
    k = np.asarray(successes, dtype=np.float64)
    n = np.broadcast_to(np.asarray(trials, dtype=np.float64), k.shape)
    _check_counts(k, n)
    with np.errstate(invalid="ignore"):
        from scipy.stats import beta

        out = beta.ppf(1.0 - delta, k + 1, n - k)
    out = np.where(k == n, 1.0, out)
    return out if out.ndim else float(out)


def _check_counts(k: np.ndarray, n: np.ndarray) -> None:
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("binomial counts need trials >= 1 and 0 <= successes <= trials")


def smallest_useful_n(delta: float, *, alpha: float = 1.0, num_classes: int = 2, max_n: int = 10**7) -> int:
    """The fewest estimation samples with which a certificate can hold at all (every vote for one class).

    For α = 1 (the smoothed model alone, Cohen et al.) this is the least n with δ^(1/n) > 1/2. For a mixture
    it is the least n with α·p_A_lower > α·p_B_upper + 1 − α when all n votes agree, with the bounds of
    :func:`mixture_bounds`.
    """
    check_delta(delta)
    if alpha >= 1.0:
        return math.floor(math.log(delta) / math.log(0.5)) + 1
    if alpha <= 0.5:
        raise ValueError(f"a mixture with alpha = {alpha} <= 1/2 can never be certified")
    n = 1
    while n <= max_n:
        p_a, p_b = mixture_bounds(np.array([n]), np.array([0]), n, delta, num_classes=num_classes)
        if alpha * p_a[0] > alpha * p_b[0] + 1.0 - alpha:
            lo = n // 2 + 1 if n > 1 else 1
            for m in range(lo, n + 1):  # the doubling overshot by at most a factor two
                p_a, p_b = mixture_bounds(np.array([m]), np.array([0]), m, delta, num_classes=num_classes)
                if alpha * p_a[0] > alpha * p_b[0] + 1.0 - alpha:
                    return m
        n *= 2
    raise ValueError(f"no n up to {max_n} can certify a mixture with alpha = {alpha}")


def mixture_bounds(count_a, count_b_max, n: int, delta: float, *, num_classes: int):
    """Bounds (p_A lower, p_B upper) that hold together with probability at least 1 − δ.

    δ is split in two (Bonferroni): δ/2 for the lower bound on the chosen class's probability, and δ/2
    spread over the K − 1 other classes for upper bounds on each of them, so their maximum bounds the
    runner-up whichever it is. p_B is also at most 1 − p_A (the probabilities sum to one); the smaller of
    the two bounds is kept. ``count_b_max`` is the largest vote count among the other classes.
    """
    p_a = np.asarray(clopper_pearson_lower(count_a, n, delta / 2.0), dtype=np.float64)
    per_class = delta / (2.0 * max(1, num_classes - 1))
    p_b = np.asarray(clopper_pearson_upper(count_b_max, n, per_class), dtype=np.float64)
    return p_a, np.minimum(p_b, 1.0 - p_a)
