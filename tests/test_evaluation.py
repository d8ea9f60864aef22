import itertools
import json

import pytest
import torch
from conftest import LinearModel

from adasmooth import MixedClassifier
from adasmooth.calibration.sweep import SweepPoint, choose_point, clean_accuracy_grid, sweep
from adasmooth.evaluation import (
    AttackOutcome,
    PGDAttack,
    TransferAttack,
    evaluate_robustness,
    run_autoattack,
)
from adasmooth.evaluation.margins import margin_groups, margin_summary


class FixedMask:
    """A fake attack that 'breaks' a fixed set of examples."""

    def __init__(self, name, robust):
        self.name = name
        self.robust = torch.tensor(robust)

    def settings(self):
        return {"name": self.name, "type": "fixed"}

    def robust_mask(self, model, x, y, **_):
        return AttackOutcome(robust=self.robust)


class Oracle(torch.nn.Module):
    """Predicts the label stored in pixel 0 (scaled by 10), so clean correctness is set by hand."""

    num_classes = 4

    def forward(self, x):
        pred = (x.flatten(1)[:, 0] * 10).round().long().clamp(0, 3)
        return torch.nn.functional.one_hot(pred, 4).float() * 5 + 0 * x.flatten(1)[:, :1]


def test_worst_case_is_the_per_example_and_over_attacks_and_clean():
    x = torch.zeros(6, 1, 2, 2)
    y = torch.tensor([0, 0, 0, 0, 0, 1])  # the last example is misclassified on clean input
    attacks = [FixedMask("a", [True, False, True, True, True, True]),
               FixedMask("b", [True, True, False, True, True, True]),
               FixedMask("c", [True, True, True, True, False, True])]
    rep = evaluate_robustness(Oracle(), x, y, attacks, eps=0.1, sanity_checks=False, progress=False)
    assert rep.clean_accuracy == pytest.approx(5 / 6)
    assert [a["accuracy"] for a in rep.attacks] == pytest.approx([4 / 6, 4 / 6, 4 / 6])  # clean-wrong never counts
    assert rep.robust_per_example == [1, 0, 0, 1, 0, 0]
    assert rep.robust_accuracy == pytest.approx(2 / 6)
    assert rep.sanity["robust_le_clean"]
    json.dumps(rep.to_dict())


def _linear(k=5, d=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return LinearModel(torch.randn(k, d, generator=g) * scale)


def test_pgd_and_transfer_attacks_with_sanity_checks():
    model = _linear()
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    rep = evaluate_robustness(model, x, y, [PGDAttack(steps=10), TransferAttack(_linear(seed=3), "other")],
                              eps=0.05, progress=False)
    assert rep.clean_accuracy == 1.0
    assert rep.robust_accuracy <= min(a["accuracy"] for a in rep.attacks)
    assert rep.sanity["eps_zero_equals_clean"]["ok"] and rep.sanity["huge_eps_breaks_model"]["ok"]
    assert rep.n == 40 and rep.eps == 0.05 and rep.attacks[1]["crafted_on"] == "other"


def test_autoattack_standard_runs_its_four_sub_attacks_in_order():
    """The full standard set through the adapter (the demo's default plan): APGD-CE, APGD-T, FAB-T, then
    Square at 5,000 queries, each on what the ones before it left, the accuracies non-increasing."""
    model = _linear(k=10, scale=3.0)
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    res = run_autoattack(model, x, y, eps=0.01, version="standard", seed=0)
    assert list(res.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = list(res.per_attack.values())
    assert all(a >= b for a, b in itertools.pairwise(accs)) and accs[-1] == pytest.approx(res.robust_accuracy)
    assert 0.0 < res.robust_accuracy < 1.0  # some points fall and some survive to Square: every stage ran
    assert res.settings["sub_attacks"]["square"]["n_queries"] == 5000
    assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    assert (res.x_adv - x).abs().max() <= 0.01 + 1e-6


def test_autoattack_adapter_runs_a_custom_list_and_keeps_rng_state():
    model = _linear(k=10, scale=3.0)
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    res = run_autoattack(model, x, y, eps=0.02, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0,
                         options={"apgd.n_iter": 10, "apgd_targeted.n_iter": 10, "apgd_targeted.n_target_classes": 2})
    assert torch.equal(torch.rand(1), before)  # AutoAttack's global seeding did not leak out
    assert res.clean_correct.all()
    assert 0.0 <= res.robust_accuracy <= 1.0 and "apgd-ce" in res.per_attack
    assert (res.x_adv - x).abs().max() <= 0.02 + 1e-6
    # robust flags agree with the model's own predictions on the returned images
    assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    # the report says what ran, with the settings in force (APGD-CE: the constructor's 5 restarts)
    subs = res.settings["sub_attacks"]
    assert list(subs) == ["apgd-ce", "apgd-t"] and subs["apgd-ce"]["n_iter"] == 10
    assert subs["apgd-ce"]["n_restarts"] == 5 and subs["apgd-t"]["n_target_classes"] == 2
    from adasmooth.evaluation.attack_specs import AutoAttackSpec
    from adasmooth.evaluation.autoattack import planned_sub_attacks

    half = AutoAttackSpec.named("apgd")  # the standard set's white-box half, settings included
    standard = planned_sub_attacks(version="standard")
    assert planned_sub_attacks(version=half.version, attacks=half.attacks, options=half.options) == {
        k: standard[k] for k in ("apgd-ce", "apgd-t")}
    with pytest.raises(ValueError, match="custom"):
        run_autoattack(model, x, y, eps=0.1, version="custom")
    with pytest.raises(ValueError, match="only goes with"):
        run_autoattack(model, x, y, eps=0.1, attacks=["apgd-ce"])
    with pytest.raises(ValueError, match="unknown AutoAttack option"):
        run_autoattack(model, x, y, eps=0.1, version="custom", attacks=["apgd-ce"], options={"apgd.nope": 1})


def test_bad_inputs_fail_before_any_work():
    model = _linear()
    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    for bad, msg in ((x * 2, r"\[0, 1\]"), (x[:, :, :, :1].squeeze(3), "NCHW"),
                     (torch.full_like(x, float("nan")), "NaN")):
        with pytest.raises(ValueError, match=msg):
            evaluate_robustness(model, bad, y, [], eps=0.1, progress=False)
    with pytest.raises(ValueError, match="cannot take images of shape"):
        evaluate_robustness(model, torch.rand(4, 3, 4, 4), y, [], eps=0.1, progress=False)
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate_robustness(model, x, torch.tensor([0, 1, 2, 9]), [], eps=0.1, progress=False)


def test_clean_grid_matches_direct_mixtures_and_choice_rule():
    std, rob = _linear(seed=0, scale=3), _linear(seed=1)
    x = torch.rand(30, 1, 4, 4)
    y = std(x).argmax(1)
    g, h = std(x), rob(x)
    grid = clean_accuracy_grid(g, h, y, [0.0, 0.4, 1.0], (1.0, 2.0), (0.5,))
    for i, sg in enumerate((1.0, 2.0)):
        for k, a in enumerate((0.0, 0.4, 1.0)):
            direct = (MixedClassifier(std, rob, alpha=a, standard_scale=sg, robust_scale=0.5)(x).argmax(1) == y).float().mean()
            assert grid[i, 0, k] == pytest.approx(float(direct))
    pts = [SweepPoint(0.5, 1, 1, 0.9, 0.5), SweepPoint(0.8, 1, 1, 0.85, 0.69), SweepPoint(0.9, 1, 1, 0.8, 0.71)]
    assert choose_point(pts, 0.71, 0.97).alpha == 0.8
    assert choose_point(pts, 0.80, 0.97) is None


def test_sweep_end_to_end_on_linear_models():
    std, rob = _linear(seed=0, scale=3), _linear(seed=1, scale=0.5)
    x = torch.rand(60, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = rob(x).argmax(1)
    res = sweep(std, rob, x, y, alphas=[0.0, 0.6, 1.0], eps=0.05, n_robust=20,
                attacks=[PGDAttack(steps=5)], keep_robust=0.9, progress=False)
    assert [p.alpha for p in res.points] == [0.0, 0.6, 1.0]
    assert res.points[-1].clean_accuracy == 1.0 and res.robust["clean_accuracy"] == 1.0
    assert res.chosen is not None and res.chosen.robust_accuracy >= 0.9 * res.robust["robust_accuracy"]
    assert res.settings["n_robust"] == 20


def test_margin_groups_and_summary():
    clean = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 3.0, 0.0]])
    adv = torch.tensor([[0.2, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 9.0]])
    y = torch.tensor([0, 1, 1])
    groups = margin_groups(clean, adv, y)
    assert [len(groups[k]) for k in ("clean_correct", "clean_wrong", "attacked_correct", "attacked_wrong")] == [2, 1, 2, 1]
    s = margin_summary(groups, alpha=0.8)
    assert s["threshold"]["margin"] == pytest.approx(0.25)
    assert s["clean_wrong"]["share_above_threshold"] == 0.0  # margin of [0.1, 0, 0] is ~0.03
    assert s["clean_correct"]["share_above_threshold"] == 1.0


def test_benign_confidence_share_is_computed_from_the_quantile():
    from adasmooth.evaluation.margins import benign_confidence

    groups = {"attacked_correct": torch.linspace(0.0, 1.0, 101), "clean_wrong": torch.tensor([0.01, 0.02, 0.5, 0.9])}
    b = benign_confidence(groups)
    assert b["q"] == pytest.approx(0.05) and b["share_clean_wrong_below_q"] == 0.5
    assert benign_confidence({"attacked_correct": torch.tensor([]), "clean_wrong": torch.tensor([0.1])}) is None


def test_attacks_take_input_gradients_only_and_leave_trainable_weights_as_they_were():
    from adasmooth.attacks.gradients import input_gradients_only

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model[3].weight.requires_grad_(False)  # already frozen: stays frozen
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    xg = x.clone().requires_grad_()
    ref, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
    with input_gradients_only(model):
        assert not any(p.requires_grad for p in model.parameters())
        got, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)
    assert torch.equal(got, ref)
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]

    seen = []

    class Spy(PGDAttack):
        def robust_mask(self, model, *args, **kwargs):
            seen.append([p.requires_grad for p in model.parameters()])
            return super().robust_mask(model, *args, **kwargs)

    evaluate_robustness(model, x, y, [Spy(steps=3, seed=0)], eps=0.1, sanity_checks=False, progress=False)
    assert seen == [[False] * 4] and all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]
