import math

import pytest
import torch
from conftest import LinearModel

from adasmooth import MixedClassifier
from adasmooth.evaluation.margins import alpha_threshold, probability_margin
from adasmooth.mixing import mix_log_probs


def _pair(k=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LinearModel(torch.randn(k, d, generator=g) * 3), LinearModel(torch.randn(k, d, generator=g))


def test_alpha_zero_and_one_are_the_base_models():
    std, rob = _pair()
    x = torch.rand(7, 1, 4, 4)
    assert torch.equal(MixedClassifier(std, rob, alpha=0.0)(x), torch.log_softmax(std(x), 1))
    assert torch.equal(MixedClassifier(std, rob, alpha=1.0)(x), torch.log_softmax(rob(x), 1))
    a = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    out = MixedClassifier(std, rob, alpha=a)(x)
    ref = torch.where(a[:, None] == 1, torch.log_softmax(rob(x), 1), torch.log_softmax(std(x), 1))
    assert torch.allclose(out, ref)


def test_output_is_the_log_of_the_probability_mixture_and_normalised():
    std, rob = _pair()
    x = torch.rand(5, 1, 4, 4)
    for alpha in (0.1, 0.5, 0.83):
        m = MixedClassifier(std, rob, alpha=alpha, standard_scale=2.0, robust_scale=0.5)
        p = (1 - alpha) * torch.softmax(2 * std(x), 1) + alpha * torch.softmax(0.5 * rob(x), 1)
        assert torch.allclose(m(x).exp(), p, atol=1e-6)
        assert torch.allclose(m(x).exp().sum(1), torch.ones(5), atol=1e-6)


def test_extreme_logits_stay_finite_with_finite_gradients():
    g = torch.tensor([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], requires_grad=True)
    h = torch.tensor([[-1e4, 1e4, 0.0], [5e3, -5e3, 2.0]], requires_grad=True)
    for alpha in (0.0, 1e-12, 0.5, 1 - 1e-12, 1.0, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.3])):
        out = mix_log_probs(g, h, alpha)
        assert not torch.isnan(out).any()
        assert torch.isfinite(torch.logsumexp(out, 1)).all()
        (dg, dh) = torch.autograd.grad(out[:, 0].sum() + out[:, 2].sum(), (g, h), allow_unused=True, materialize_grads=True)
        assert torch.isfinite(dg).all() and torch.isfinite(dh).all()


def test_alpha_that_reaches_zero_or_one_inside_the_graph_keeps_gradients_finite():
    # An adaptive gate can output α exactly 0 or 1 (a saturated sigmoid, or a zero-width α range).
    # The gradient must stay finite for every example, or an attack silently breaks on them.
    g = torch.randn(4, 5, requires_grad=True)
    h = torch.randn(4, 5, requires_grad=True)
    raw = torch.tensor([0.3, -0.2, 0.1, 0.0], requires_grad=True)
    alpha = torch.stack([raw[0] * 0, raw[1] * 0 + 1, torch.sigmoid(raw[2]), torch.sigmoid(raw[3] + 200.0)])
    assert alpha[3] == 1.0  # float32 sigmoid saturates
    out = mix_log_probs(g, h, alpha)
    dg, dh, draw = torch.autograd.grad(out[:, 0].sum(), (g, h, raw))
    assert torch.isfinite(dg).all() and torch.isfinite(dh).all() and torch.isfinite(draw).all()
    assert torch.allclose(out[0], torch.log_softmax(g[0], 0)) and torch.allclose(out[1], torch.log_softmax(h[1], 0))
    assert dh[0].abs().sum() == 0 and dg[1].abs().sum() == 0 and dg[2].abs().sum() > 0


def test_per_example_alpha_matches_scalar_alpha_row_by_row():
    std, rob = _pair()
    x = torch.rand(4, 1, 4, 4)
    alphas = torch.tensor([0.2, 0.5, 0.7, 0.95])
    out = MixedClassifier(std, rob, alpha=alphas)(x)
    for i, a in enumerate(alphas.tolist()):
        assert torch.allclose(out[i], MixedClassifier(std, rob, alpha=a)(x[i : i + 1])[0], atol=1e-6)


def test_grid_of_alphas_in_one_call():
    std, rob = _pair()
    x = torch.rand(4, 1, 4, 4)
    g, h = MixedClassifier(std, rob, alpha=0.5).base_logits(x)
    alphas = torch.tensor([0.0, 0.3, 1.0]).view(-1, 1, 1)
    grid = mix_log_probs(g, h, alphas)
    assert grid.shape == (3, 4, 6)
    assert torch.allclose(grid[1], MixedClassifier(std, rob, alpha=0.3)(x), atol=1e-6)


def test_margin_lemma_on_random_cases():
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(200):
        k = int(torch.randint(2, 12, (1,), generator=gen))
        g = torch.randn(64, k, generator=gen) * 10
        h = torch.randn(64, k, generator=gen) * float(torch.rand(1, generator=gen) * 8)
        alpha = 0.5 + 0.5 * float(torch.rand(1, generator=gen))
        mixed = mix_log_probs(g, h, alpha)
        covered = probability_margin(h) >= alpha_threshold(alpha)
        assert (mixed.argmax(1)[covered] == h.argmax(1)[covered]).all()
        checked += int(covered.sum())
    assert checked > 1000  # the lemma was exercised, not vacuously true


def test_bad_arguments():
    std, rob = _pair()
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        MixedClassifier(std, rob, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        MixedClassifier(std, rob, alpha=torch.tensor([0.2, math.nan]))
    with pytest.raises(ValueError, match="number of classes"):
        MixedClassifier(std, LinearModel(torch.randn(4, 16)), alpha=0.5)
    with pytest.raises(ValueError, match="scales"):
        MixedClassifier(std, rob, alpha=0.5, robust_scale=0.0)
