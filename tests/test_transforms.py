import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LinearModel

from adasmooth import MixedClassifier
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork, load_adaptive, save_adaptive
from adasmooth.models import SmallResNet
from adasmooth.transforms import (
    Compose,
    HardOneHot,
    MixedNUTSMap,
    Temperature,
    TopKLayerNorm,
    describe_map,
    map_from_description,
    straight_through,
    topk_layer_norm,
)


def test_topk_layer_norm_matches_a_hand_computation():
    z = torch.tensor([[4.0, 1.0, 2.0, -3.0]])
    top = [4.0, 2.0, 1.0]
    mean = sum(top) / 3
    std = math.sqrt(sum((t - mean) ** 2 for t in top) / 2)  # unbiased
    assert torch.allclose(topk_layer_norm(z, 3), (z - mean) / std, atol=1e-6)
    assert torch.allclose(TopKLayerNorm(None)(z), (z - z.mean()) / z.std(), atol=1e-6)
    # invariant to the logits' offset and positive scale
    assert torch.allclose(topk_layer_norm(3 * z + 7, 3), topk_layer_norm(z, 3), atol=1e-5)


def test_mixednuts_map_matches_a_hand_computation_and_keeps_the_argmax():
    z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 3.0, 2.9, -5.0]])
    m = MixedNUTSMap(scale=1.5, shift=0.3, power=2.0, k=3)
    u = F.gelu(topk_layer_norm(z, 3) + 0.3)
    assert torch.allclose(m(z), 1.5 * torch.sign(u) * u.abs() ** 2, atol=1e-6)
    torch.manual_seed(0)
    z = torch.randn(500, 10) * 3
    for shift in (0.0, 0.5, 2.0):
        for power in (0.5, 1.0, 3.0):
            out = MixedNUTSMap(scale=2.0, shift=shift, power=power, k=4)(z)
            assert torch.equal(out.argmax(1), z.argmax(1))
    # a power above one widens large margins relative to small ones
    p = torch.softmax(MixedNUTSMap(scale=1.0, shift=0.0, power=3.0, k=None)(z), 1)
    q = torch.softmax(MixedNUTSMap(scale=1.0, shift=0.0, power=1.0, k=None)(z), 1)
    confident = (z.softmax(1).max(1).values > 0.9)
    assert p.max(1).values[confident].mean() > q.max(1).values[confident].mean()


def test_temperature_one_hot_and_compose():
    z = torch.tensor([[0.2, 1.5, -0.3]])
    assert torch.allclose(Temperature(2.0)(z), 2 * z)
    assert torch.equal(HardOneHot(5.0)(z), torch.tensor([[0.0, 5.0, 0.0]]))
    c = Compose(Temperature(2.0), HardOneHot(3.0))
    assert torch.equal(c(z), torch.tensor([[0.0, 3.0, 0.0]]))
    for m in (Temperature(2.0), TopKLayerNorm(3), MixedNUTSMap(scale=1.0, shift=0.2, power=1.5), HardOneHot(3.0), c):
        rebuilt = map_from_description(describe_map(m))
        assert torch.equal(rebuilt(z), m(z)) and describe_map(rebuilt) == describe_map(m)
    with pytest.raises(ValueError):
        Temperature(0.0)
    with pytest.raises(ValueError):
        MixedNUTSMap(scale=1.0, shift=0.0, power=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        TopKLayerNorm(1)


def test_straight_through_passes_the_true_value_and_the_surrogate_gradient():
    z = torch.tensor([[0.2, 1.5, -0.3]], requires_grad=True)
    hard = HardOneHot(4.0, surrogate_temperature=0.5)
    out = straight_through(hard(z), hard.surrogate(z))
    assert torch.equal(out.detach(), hard(z))
    (g,) = torch.autograd.grad((out * torch.tensor([[1.0, 2.0, 3.0]])).sum(), z)
    (ref,) = torch.autograd.grad((hard.surrogate(z) * torch.tensor([[1.0, 2.0, 3.0]])).sum(), z)
    assert torch.allclose(g, ref) and g.abs().sum() > 0


def test_maps_plug_into_both_mixtures_and_survive_saving(tmp_path):
    g = torch.Generator().manual_seed(0)
    std, rob = LinearModel(torch.randn(10, 16, generator=g)), LinearModel(torch.randn(10, 16, generator=g))
    x = torch.rand(6, 1, 4, 4)
    nuts = MixedNUTSMap(scale=2.0, shift=0.1, power=2.0, k=4)
    m = MixedClassifier(std, rob, alpha=0.7, robust_map=nuts)
    ref = torch.log(0.3 * torch.softmax(std(x), 1) + 0.7 * torch.softmax(nuts(rob(x)), 1))
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert m.describe()["robust_map"]["type"] == "mixednuts"

    torch.manual_seed(0)
    s, r = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    layers = ("stage1", "stage2")
    gate = MixingNetwork.from_models(s, r, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28), width=8)
    ada = AdaptiveMixedClassifier(s, r, gate, standard_layers=layers, robust_layers=layers, robust_map=nuts,
                                  alpha_range=(0.5, 1.0)).eval()
    xi = torch.rand(4, 1, 28, 28)
    gl, hl, gamma = ada.components(xi)
    a = ada.alpha_from_gamma(gamma)[:, None]
    expect = torch.log((1 - a) * torch.softmax(gl, 1) + a * torch.softmax(nuts(hl), 1))
    assert torch.allclose(ada(xi), expect, atol=1e-5)
    save_adaptive(tmp_path / "mix", ada)
    back = load_adaptive(tmp_path / "mix", s, r)
    assert torch.allclose(back(xi), ada(xi), atol=1e-6)


def _synthetic_margins(n=400, seed=0):
    """Attacked-correct rows: one clearly dominant logit; clean-wrong rows: two nearly tied top logits."""
    g = torch.Generator().manual_seed(seed)
    ac = torch.randn(n, 10, generator=g) * 0.3
    ac[:, 0] += 2.0 + 2.0 * torch.rand(n, generator=g)
    cw = torch.randn(n, 10, generator=g) * 0.3
    cw[:, 0] += 2.0
    cw[:, 1] += 2.0 - 0.3 * torch.rand(n, generator=g)
    return ac, cw


def test_map_calibration_separates_the_populations_and_its_alpha_keeps_the_robust_answer():
    from adasmooth.calibration.output_map import calibrate_logit_map, probability_margins
    from adasmooth.mixing import mix_log_probs

    ac, cw = _synthetic_margins()
    cal = calibrate_logit_map(ac, cw, beta=0.95)
    by_params = {(r["scale"], r["shift"], r["power"]): r for r in cal.grid}
    identity_like = by_params[(1.0, 0.0, 1.0)]
    assert cal.objective <= identity_like["objective"] and cal.objective <= 0.05
    m = cal.make_map()
    q = float(torch.quantile(probability_margins(m(ac)), 0.05))
    assert cal.threshold == pytest.approx(q, abs=1e-6) and cal.alpha == pytest.approx(1 / (1 + q), abs=1e-6)
    assert cal.alpha >= 0.5
    # margin lemma: at this α the mixture keeps the robust answer on >= beta of the attacked-correct rows,
    # even against a standard model that votes for a wrong class with full confidence
    worst_standard = torch.full_like(ac, -30.0)
    worst_standard[:, 3] = 30.0
    mixed = mix_log_probs(worst_standard, m(ac), cal.alpha)
    assert (mixed.argmax(1) == 0).float().mean() >= 0.95
    # and most clean-wrong rows fall to the standard model
    assert (mix_log_probs(worst_standard, m(cw), cal.alpha).argmax(1) == 3).float().mean() >= 0.9


def test_map_calibration_never_picks_a_map_that_changes_the_robust_prediction():
    from adasmooth.calibration.output_map import calibrate_logit_map

    ac, cw = _synthetic_margins()
    # rows whose top four logits are nearly tied: a shift of -1 puts the top one below GELU's zero while
    # the far-below logits map to ~0, so such a map would flip the prediction
    g = torch.Generator().manual_seed(1)
    tied = torch.full((40, 10), -8.0)
    tied[:, :4] = 3.0 + 0.01 * torch.rand(40, 4, generator=g)
    cal = calibrate_logit_map(torch.cat([ac, tied]), cw, beta=0.95, shifts=(-1.0, 0.0, 1.0))
    flipping = [r for r in cal.grid if r["shift"] == -1.0]
    assert flipping and all(r["argmax_changed"] > 0 for r in flipping)
    assert cal.shift >= 0.0 and (cal.make_map()(tied).argmax(1) == tied.argmax(1)).all()
    with pytest.raises(ValueError, match="shifts >= 0"):
        calibrate_logit_map(torch.cat([ac, tied]), cw, shifts=(-1.0,))


def test_map_calibration_rejects_bad_input():
    from adasmooth.calibration.output_map import calibrate_logit_map

    ac, cw = _synthetic_margins(20)
    with pytest.raises(ValueError, match="beta"):
        calibrate_logit_map(ac, cw, beta=1.0)
    with pytest.raises(ValueError, match="at least 10"):
        calibrate_logit_map(ac[:5], cw)


def test_surrogate_guided_attack_breaks_a_hard_vote_that_plain_gradients_cannot_see():
    from adasmooth.evaluation import PGDAttack, evaluate_robustness
    from adasmooth.evaluation.surrogate import SurrogateAttack, SurrogateGuided

    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 16, generator=g)
    std, rob = LinearModel(w * 5), LinearModel(torch.zeros(10, 16))
    # the standard model votes by a hard one-hot, the robust model is uniform: the mixture
    # follows the standard model's argmax, but its gradient through the one-hot is zero
    mixed = MixedClassifier(std, rob, alpha=0.5, standard_map=HardOneHot(10.0, surrogate_temperature=1.0)).eval()
    x = torch.rand(40, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = mixed(x).argmax(1)
        wrapped = SurrogateGuided(mixed)
        assert torch.allclose(wrapped(x), mixed(x))  # the true values pass forward
    rep = evaluate_robustness(mixed, x, y, [PGDAttack(steps=10, seed=0), SurrogateAttack(PGDAttack(steps=10, seed=0))],
                              eps=0.1, sanity_checks=False, progress=False)
    plain, guided = rep.attacks
    # plain gradients are zero (only the random start moves); the surrogate's lead through the vote
    assert plain["accuracy"] >= 0.9 and guided["name"] == "pgd-surrogate" and guided["accuracy"] <= 0.3
    assert rep.robust_accuracy == guided["accuracy"]


def test_mixednuts_surrogate_keeps_the_order_and_passes_gradient_where_the_map_is_flat():
    z = torch.tensor([[6.0, 5.0, 4.5, 4.0, -20.0]], requires_grad=True)
    m = MixedNUTSMap(scale=2.0, shift=0.0, power=3.0, k=4)
    sur = m.surrogate(z)
    assert torch.allclose(sur, 2.0 * topk_layer_norm(z, 4), atol=1e-6)
    assert torch.equal(sur.argsort(descending=True), z.argsort(descending=True))  # monotone, unlike GELU
    assert sur.argmax() == m(z).argmax()
    # the last logit lies far below the top four: GELU flattens it, the surrogate does not
    (g_true,) = torch.autograd.grad(m(z)[0, 4], z)
    (g_sur,) = torch.autograd.grad(m.surrogate(z)[0, 4], z)
    assert abs(g_true[0, 4]) < 1e-6 and g_sur[0, 4] > 0.1


def _tiny_adaptive(**maps):
    torch.manual_seed(0)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    layers = ("stage1", "stage2")
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28),
                                     width=8)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers, **maps).eval()


def test_surrogate_guided_adaptive_model_passes_values_and_surrogate_gradients():
    from adasmooth.evaluation.surrogate import SurrogateGuided, has_logit_maps

    rmap = MixedNUTSMap(scale=1.0, shift=0.2, power=2.0, k=4)
    smap = HardOneHot(5.0, surrogate_temperature=1.0)
    model = _tiny_adaptive(standard_map=smap, robust_map=rmap)
    assert has_logit_maps(model) and not has_logit_maps(_tiny_adaptive())
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    guided = SurrogateGuided(model)
    out = guided(x)
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-6)  # the true values
    assert model.standard_map is smap and model.robust_map is rmap  # maps restored after the call
    # the hard vote has no gradient: the plain gradient comes from the robust side alone, the guided one
    # also through the vote's softmax stand-in
    y = out.detach().argmin(1)
    (g_guided,) = torch.autograd.grad(out[torch.arange(4), y].sum(), x)
    (g_plain,) = torch.autograd.grad(model(x)[torch.arange(4), y].sum(), x)
    assert not torch.allclose(g_guided, g_plain, atol=1e-6)
    # maps without a surrogate (a temperature) are their own surrogate: the same gradient as the model's
    smooth = _tiny_adaptive(robust_map=Temperature(2.0))
    (g1,) = torch.autograd.grad(SurrogateGuided(smooth)(x)[:, 0].sum(), x)
    (g2,) = torch.autograd.grad(smooth(x)[:, 0].sum(), x)
    assert torch.allclose(g1, g2, atol=1e-6)
    with pytest.raises(TypeError, match="standard_map"):
        SurrogateGuided(SmallResNet(width=4))


def test_attack_plan_adds_surrogate_guided_attacks_for_mapped_mixtures():
    from adasmooth.evaluation.plans import attack_plan

    std, rob = LinearModel(torch.zeros(10, 16)), LinearModel(torch.zeros(10, 16))
    names = [a.name for a in attack_plan("mixed", standard=std, robust=rob, surrogate=True)]
    assert names == ["pgd20-ce", "transfer-from-standard", "transfer-from-robust", "pgd20-ce-surrogate",
                     "autoattack-standard", "autoattack-standard-surrogate"]
    plain = [a.name for a in attack_plan("mixed", standard=std, robust=rob)]
    assert not any(n.endswith("surrogate") for n in plain)
    with pytest.raises(ValueError, match="base models"):
        attack_plan("base", surrogate=True)


def test_minimum_margin_inputs_find_the_closed_form_worst_margin_of_a_linear_model():
    from adasmooth.calibration.output_map import minimum_margin_inputs, signed_margins

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 16, generator=g)
    w[2] = 0.0
    model = LinearModel(w, torch.tensor([0.0, 0.0, -50.0])).eval()  # class 2 never matters: two classes
    x = 0.4 + 0.2 * torch.rand(30, 1, 4, 4, generator=g)  # inside the box by more than eps
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.05
    # the logit gap z_y - z_other falls by eps·||w_y - w_other||_1 at the ball's worst corner
    d = (w[y] - w[1 - y])
    gap = (x.flatten(1) * d).sum(1) - eps * d.abs().sum(1)
    expected = torch.tanh(gap / 2)  # p_y - p_other for two classes
    got = minimum_margin_inputs(model, x, y, eps=eps, n_iter=20, batch_size=16,
                                candidates=(x.clone(),))  # the clean input as a (worse) candidate
    with torch.no_grad():
        m = signed_margins(model(got), y)
        clean_m = signed_margins(model(x), y)
    assert (got - x).abs().max() <= eps + 1e-6
    assert torch.allclose(m, expected, atol=2e-3)
    # examples that stay correct get an input below their clean margin, not the clean image back
    assert ((m > 0).sum() >= 5) and bool((m[m > 0] < clean_m[m > 0] - 1e-3).all())


def test_signed_margins_by_hand():
    from adasmooth.calibration.output_map import signed_margins

    z = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    assert torch.allclose(signed_margins(z, torch.tensor([0, 0])), torch.tensor([0.3, -0.3]), atol=1e-6)
