import pytest
import torch
from conftest import LinearModel

from adasmooth.attacks import pgd, ranked_target, targeted_dlr


def _two_class_linear(d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, d, generator=g)
    return LinearModel(w), w


@pytest.mark.parametrize("batch", [1, 5, 17])
def test_linf_pgd_reaches_the_closed_form_worst_case(batch):
    model, w = _two_class_linear()
    x = torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    y = torch.zeros(batch, dtype=torch.long)
    eps = 0.1
    # minimise the margin (w0 - w1).x inside the box: move each pixel by eps against sign(w0 - w1)
    d = (w[0] - w[1]).view(1, 1, 4, 4)
    optimum = (x - eps * d.sign()).clamp(0, 1)
    # make every point robust so that PGD runs all its steps instead of stopping at the first flip
    model.bias.data = torch.tensor([10.0, 0.0])  # large enough that nothing flips, small enough for a nonzero CE gradient
    x_adv = pgd(model, x, y, eps=eps, steps=30, step_size=0.02, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_adv, optimum, atol=1e-6)
    assert (x_adv - x).abs().max() <= eps + 1e-6


def test_l2_pgd_reaches_the_closed_form_worst_case():
    model, w = _two_class_linear()
    model.bias.data = torch.tensor([10.0, 0.0])  # large enough that nothing flips, small enough for a nonzero CE gradient
    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    eps = 0.3
    d = (w[0] - w[1]).view(1, 1, 4, 4)
    optimum = x - eps * d / d.norm()
    x_adv = pgd(model, x, y, eps=eps, norm="L2", steps=50, step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x_adv, optimum, atol=1e-3)  # fixed steps orbit the optimum by ~1e-4
    assert abs(float((x_adv - x).flatten(1).norm(dim=1).max()) - eps) < 1e-4


def test_per_example_eps_and_first_success_is_kept():
    model, w = _two_class_linear()
    x = torch.full((4, 1, 4, 4), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    d = (w[0] - w[1]).flatten()
    margin = float(0.5 * d.sum())  # the clean margin z0 - z1 at x = 0.5
    if margin < 0:
        y = torch.ones(4, dtype=torch.long)
        d, margin = -d, -margin
    need = margin / float(d.abs().sum())  # l-inf radius that exactly flips the prediction
    eps = torch.tensor([0.5 * need, 0.9 * need, 1.2 * need, 2 * need])
    x_adv = pgd(model, x, y, eps=eps, steps=40, generator=torch.Generator().manual_seed(0))
    flipped = model(x_adv).argmax(1) != y
    assert flipped.tolist() == [False, False, True, True]
    assert ((x_adv - x).abs().flatten(1).max(1).values <= eps + 1e-6).all()


def test_targeted_dlr_reaches_the_target():
    torch.manual_seed(0)
    w = torch.randn(5, 16)
    model = LinearModel(w)
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)
    t = ranked_target(model(x), y, 1)
    assert (t != y).all()
    x_adv = pgd(model, x, y, eps=1.0, steps=50, loss="dlr-targeted", targets=t, step_size=0.05,
                generator=torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(1) != y).all()
    loss = targeted_dlr(model(x_adv), y, t)
    assert torch.isfinite(loss).all()


def test_seeded_random_start_is_reproducible_and_bad_options_fail():
    model, _ = _two_class_linear()
    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    a = pgd(model, x, y, eps=0.1, steps=0, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, eps=0.1, steps=0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, norm="L7")
    with pytest.raises(ValueError, match="targets"):
        pgd(model, x, y, eps=0.1, loss="dlr-targeted")
    with pytest.raises(ValueError, match="shape"):
        pgd(model, x, y, eps=torch.ones(3))


def test_pgd_refuses_a_model_whose_gradient_is_not_finite():
    class SqrtAtZero(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1).sqrt().sum(1), -x.flatten(1).sum(1)], 1)

    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(FloatingPointError, match="non-finite input gradient"):
        pgd(SqrtAtZero(), x, torch.zeros(3, dtype=torch.long), eps=0.1, steps=2, random_start=False)
