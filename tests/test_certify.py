"""Certification: exact binomial bounds, the mixture radii against brute force on closed-form toys,
randomized smoothing's abstention and reproducibility, and an attack check of the Lipschitz certificate."""

import itertools
import logging
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from adasmooth.attacks import pgd
from adasmooth.certify import (
    ABSTAIN,
    Smooth,
    certificate_alpha,
    certify_mixture,
    clopper_pearson_lower,
    clopper_pearson_upper,
    lipschitz_radius,
    mixture_bounds,
    smallest_useful_n,
    smoothing_radius,
)
from adasmooth.mixing import MixedClassifier


def test_clopper_pearson_matches_beta_quantiles_and_closed_forms():
    k = np.array([0, 1, 37, 500, 999, 1000])
    lo = clopper_pearson_lower(k, 1000, 0.01)
    up = clopper_pearson_upper(k, 1000, 0.01)
    for i, ki in enumerate(k):
        want_lo = 0.0 if ki == 0 else beta.ppf(0.01, ki, 1000 - ki + 1)
        want_up = 1.0 if ki == 1000 else beta.ppf(0.99, ki + 1, 1000 - ki)
        assert lo[i] == pytest.approx(want_lo, abs=1e-12)
        assert up[i] == pytest.approx(want_up, abs=1e-12)
        assert lo[i] <= ki / 1000 <= up[i]
    # all successes: P(k = n | p) = p^n, so the bound solves p^n = δ
    assert clopper_pearson_lower(20, 20, 0.001) == pytest.approx(0.001 ** (1 / 20))
    assert clopper_pearson_upper(0, 20, 0.001) == pytest.approx(1 - 0.001 ** (1 / 20))


def test_clopper_pearson_lower_bound_covers_at_its_level():
    rng = np.random.default_rng(0)
    p, n, delta = 0.8, 200, 0.1
    k = rng.binomial(n, p, size=4000)
    miss = np.mean(clopper_pearson_lower(k, n, delta) > p)
    assert miss <= delta  # exact bounds are conservative
    assert miss > delta / 4  # and not vacuous


def test_alpha_one_is_cohens_radius():
    p = np.linspace(0.51, 0.999, 50)
    assert np.allclose(smoothing_radius(p, 1 - p, 1.0, 0.25), 0.25 * norm.ppf(p))


def test_smoothing_radius_against_brute_force_on_a_half_space():
    """Base f(x) = 1[x > 0] in one dimension: the smoothed probability of class 1 is Φ(x/σ) exactly.
    Against a standard model that always says class 0, the mixture keeps class 1 while
    α·Φ(x'/σ) > α·(1 − Φ(x'/σ)) + 1 − α; scan x' downwards for the true radius."""
    sigma = 0.5
    grid = np.linspace(-3, 3, 600_001)
    for alpha in (1.0, 0.9, 0.75):
        for x in (0.3, 0.8, 1.5):
            p1 = norm.cdf(x / sigma)
            r = smoothing_radius(p1, 1 - p1, alpha, sigma)
            left = grid[grid <= x]
            h1 = norm.cdf(left / sigma)
            holds = alpha * h1 > alpha * (1 - h1) + 1 - alpha
            true_r = x - left[~holds].max() if (~holds).any() else math.inf
            assert r <= true_r + 1e-4, (alpha, x)
            if alpha == 1.0:
                assert r == pytest.approx(true_r, abs=2e-5)
            else:
                assert r > 0 or true_r < 0.25  # not vacuous where there is room


def test_lipschitz_radius_against_brute_force_on_tanh_margin():
    """Two classes with logits (w·x, −w·x): h_1 − h_0 = tanh(w·x), which is |w|-Lipschitz."""
    w = 2.0
    grid = np.linspace(-2, 2, 400_001)
    for alpha in (1.0, 0.9, 0.6):
        for x in (0.2, 0.5, 1.0):
            r = lipschitz_radius(np.tanh(w * x), alpha, w)
            left = grid[grid <= x]
            holds = np.tanh(w * left) > (1 - alpha) / alpha
            true_r = x - left[~holds].max()
            assert r <= true_r + 1e-4
            if alpha == 1.0:
                assert r == pytest.approx(np.tanh(w * x) / w)


def test_mixture_radius_never_exceeds_the_robust_models():
    rng = np.random.default_rng(1)
    p_a = rng.uniform(0, 1, 2000)
    p_b = rng.uniform(0, 1, 2000) * (1 - p_a)
    for alpha in (0.5, 0.6, 0.8, 0.95):
        assert np.all(smoothing_radius(p_a, p_b, alpha, 0.5) <= smoothing_radius(p_a, p_b, 1.0, 0.5) + 1e-12)
        m = p_a - p_b
        assert np.all(lipschitz_radius(m, alpha, 3.0) <= lipschitz_radius(m, 1.0, 3.0) + 1e-12)
    assert np.all(smoothing_radius(p_a, p_b, 0.5, 0.5) == 0)  # α = 1/2 never certifies


def test_radii_keep_tensor_type_and_device():
    r = lipschitz_radius(torch.tensor([0.9, 0.1]), 0.8, 2.0)
    assert torch.is_tensor(r) and r[1] == 0 and r[0] == pytest.approx((0.9 - 0.25) / 2)


def test_bad_inputs_have_clear_errors(caplog):
    with pytest.raises(ValueError, match="alpha >= 1/2"):
        lipschitz_radius(0.5, 0.4, 1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        smoothing_radius(0.9, 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        Smooth(nn.Linear(2, 2), 2, -0.5)
    with pytest.raises(ValueError, match=r"delta .* \(0, 1\)"):
        clopper_pearson_lower(3, 5, 1.5)
    with pytest.raises(ValueError, match="Lipschitz"):
        lipschitz_radius(0.5, 0.9, 0.0)
    smooth = Smooth(_Constant(1, 3), 3, 0.25)
    with caplog.at_level(logging.WARNING):
        smooth.certify(torch.zeros(1, 1, 2, 2), 5, 8, 0.001, generator=torch.Generator().manual_seed(0))
    assert "use n >= 10" in caplog.text
    with pytest.raises(ValueError, match="classes"):
        certify_mixture(_Constant(0, 5), smooth, torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long),
                        alphas=[0.9], n0=10, n=100, generator=torch.Generator().manual_seed(0), progress=False)


def test_smallest_useful_n_is_tight():
    for delta, alpha in ((0.001, 1.0), (0.001, 0.8), (0.05, 0.7)):
        n = smallest_useful_n(delta, alpha=alpha, num_classes=10)
        for m, should in ((n, True), (n - 1, False)):
            if alpha == 1.0:
                ok = clopper_pearson_lower(m, m, delta) > 0.5
            else:
                p_a, p_b = mixture_bounds(np.array([m]), np.array([0]), m, delta, num_classes=10)
                ok = alpha * p_a[0] > alpha * p_b[0] + 1 - alpha
            assert bool(ok) is should


class _Constant(nn.Module):
    """Always predicts ``cls`` out of ``k`` classes."""

    def __init__(self, cls: int, k: int):
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x):
        out = torch.zeros(len(x), self.k)
        out[:, self.cls] = 1.0
        return out


class _SignOfFirstPixel(nn.Module):
    """Class 1 when the first pixel is above 0.5, else 0: a half-space in input space."""

    def forward(self, x):
        s = x.flatten(1)[:, 0] - 0.5
        return torch.stack([-s, s], 1) * 100


def test_abstention_and_certified_radius_of_closed_form_bases():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((3, 1, 2, 2), 0.5)  # on the boundary: votes split 50/50
    smooth = Smooth(_SignOfFirstPixel(), 2, 0.25, batch_size=64)
    assert (smooth.predict(x, 500, 0.01, generator=gen) == ABSTAIN).all()
    pred, radius = smooth.certify(x, 50, 500, 0.01, generator=gen)
    assert (pred == ABSTAIN).all() and (radius == 0).all()

    const = Smooth(_Constant(2, 3), 3, 0.5)
    assert (const.predict(x, 100, 0.01, generator=gen) == 2).all()
    pred, radius = const.certify(x, 10, 1000, 0.001, generator=gen)
    assert (pred == 2).all()
    assert radius[0] == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 1000)))

    far = torch.zeros(2, 1, 2, 2)
    far[0, 0, 0, 0] = 1.0  # first pixel 0.5 above the boundary: true radius 0.5 for the smoothed model
    pred, radius = smooth.certify(far, 50, 20_000, 0.001, generator=gen)
    assert pred.tolist() == [1, 0]
    assert 0.35 < radius[0] <= 0.5 and 0.35 < radius[1] <= 0.5


def test_counts_are_reproducible_and_batching_invariant_in_total():
    x = torch.rand(5, 1, 4, 4)
    base = _SignOfFirstPixel()
    a = Smooth(base, 2, 0.3, batch_size=7).sample_counts(x, 300, generator=torch.Generator().manual_seed(3))
    b = Smooth(base, 2, 0.3, batch_size=7).sample_counts(x, 300, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert (a.sum(1) == 300).all()
    c = Smooth(base, 2, 0.3, batch_size=1000).sample_counts(x, 300, generator=torch.Generator().manual_seed(4))
    expect = torch.as_tensor(norm.cdf((x.flatten(1)[:, 0].numpy() - 0.5) / 0.3))
    assert torch.allclose(c[:, 1].double() / 300, expect, atol=0.1)


def test_certify_mixture_properties_on_a_half_space():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 2, 2)
    y = (x.flatten(1)[:, 0] > 0.5).long()
    smooth = Smooth(_SignOfFirstPixel(), 2, 0.25, batch_size=500)
    wrong_standard = _Constant(0, 2)  # a standard model that is wrong on every class-1 image
    res = certify_mixture(wrong_standard, smooth, x, y, alphas=[0.6, 0.8, 1.0], n0=50, n=2000, delta=0.001,
                          generator=gen, chunk=8, progress=False)
    radii = [0.0, 0.1, 0.2, 0.3]
    cert = res.certified_accuracy(radii)
    clean = res.clean_accuracy()
    for curve in cert.values():
        assert all(a >= b for a, b in itertools.pairwise(curve))  # falls with the radius
    for i in range(len(radii)):
        assert cert["alpha=0.6"][i] <= cert["alpha=0.8"][i] <= cert["alpha=1"][i]
    assert np.all(res.mixture_radius[0] <= res.mixture_radius[-1] + 1e-12)
    assert cert["alpha=1"][0] <= clean["alpha=1"]
    # a certified mixture prediction is the mixture's actual prediction at x
    for a_i in range(3):
        sure = res.mixture_radius[a_i] > 0
        assert np.all(res.mixture_class[a_i][sure] == res.mixture_certified_class[sure])
    again = certify_mixture(wrong_standard, smooth, x, y, alphas=[0.6, 0.8, 1.0], n0=50, n=2000, delta=0.001,
                            generator=torch.Generator().manual_seed(0), chunk=8, progress=False)
    assert np.array_equal(again.mixture_radius, res.mixture_radius)


class _TanhMargin(nn.Module):
    """Logits (a, −a) with a = w·(x − 1/2): h_1 − h_0 = tanh(a), exactly ||w||_2-Lipschitz in ℓ2."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        a = (x.flatten(1) - 0.5) @ self.w
        return torch.stack([-a, a], 1)


def test_lipschitz_certificate_survives_attacks_inside_and_breaks_beyond():
    torch.manual_seed(0)
    w = torch.tensor([3.0, -2.0, 1.0, 0.5])
    robust = _TanhMargin(w)
    standard = _TanhMargin(-50 * w)  # all but certain of the other class everywhere: the worst partner
    alpha = 0.9
    mixed = MixedClassifier(standard, robust, alpha=alpha).eval()
    x = 0.5 + 0.12 * torch.randn(400, 1, 1, 4)
    x = x.clamp(0.05, 0.95)
    probs = torch.softmax(robust(x), 1)
    y = mixed(x).argmax(1)
    margin = probs.gather(1, y[:, None])[:, 0] - probs.gather(1, 1 - y[:, None])[:, 0]
    lip = float(w.norm())
    r = lipschitz_radius(margin, alpha, lip)
    sure = r > 0.01
    assert sure.sum() > 50
    xs, ys, rs = x[sure], y[sure], r[sure].float()
    direction = (torch.where(ys == 1, -1.0, 1.0)[:, None] * w / w.norm()).view(-1, 1, 1, 4)
    inside = [xs + 0.999 * rs.view(-1, 1, 1, 1) * direction,  # the optimal ℓ2 step against this model
              pgd(mixed, xs, ys, eps=0.999 * rs, norm="L2", steps=50, generator=torch.Generator().manual_seed(1))]
    for x_adv in inside:
        assert (mixed(x_adv.clamp(0, 1)).argmax(1) == ys).all()
    beyond = xs + 1.15 * rs.view(-1, 1, 1, 1) * direction
    assert (mixed(beyond).argmax(1) != ys).any()


def test_certificate_alpha_of_fixed_and_adaptive_models():
    mixed = MixedClassifier(_Constant(0, 2), _Constant(1, 2), alpha=0.8)
    assert certificate_alpha(mixed)[0] == 0.8

    from adasmooth.mixer import AdaptiveMixedClassifier

    class _Gate(nn.Module):
        def forward(self, std_feats, rob_feats):
            return std_feats[0].flatten(1).sum(1)

    std = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    rob = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    ada = AdaptiveMixedClassifier(std, rob, _Gate(), standard_layers=["1"], robust_layers=["1"],
                                  alpha_range=(0.85, 0.99))
    alpha, note = certificate_alpha(ada)
    assert alpha == 0.85 and "alpha_lo" in note
