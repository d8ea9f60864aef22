import math

import pytest
import torch
import torch.nn.functional as F

from adasmooth.attacks import composite_attack_loss, gate_bce, randomized_attack
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork
from adasmooth.models import SmallResNet


def _composite(std, rob):
    """The two bases mixed by a small gate that taps their stage1 and stage2 outputs (eval mode)."""
    layers = ("stage1", "stage2")
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28), width=8)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers).eval()


def test_composite_loss_matches_a_hand_computation():
    log_p = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]]), 1)
    gamma = torch.tensor([0.3, -1.2])
    y = torch.tensor([0, 2])
    w = torch.tensor([0.25, 0.0])
    got = composite_attack_loss(log_p, gamma, y, w=w)
    ce = -log_p[torch.arange(2), y]
    bce = torch.tensor([math.log1p(math.exp(-0.3)), math.log1p(math.exp(1.2))])
    assert torch.allclose(got, (1 - w) * ce + w * bce, atol=1e-6)
    assert torch.allclose(gate_bce(gamma, 0.0), F.softplus(gamma), atol=1e-6)
    # targeted rows use targeted DLR, rows with target -1 keep CE
    t = composite_attack_loss(log_p, gamma, y, w=0.0, targets=torch.tensor([1, -1]))
    z = log_p[0]
    s = z.sort(descending=True).values
    dlr = -(z[0] - z[1]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12)
    assert torch.allclose(t, torch.stack([dlr, ce[1]]), atol=1e-5)


def test_randomized_attack_stays_in_the_ball_and_is_seeded():
    torch.manual_seed(0)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    model = _composite(std, rob)
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    a = randomized_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1), max_iters=4)
    b = randomized_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1), max_iters=4)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 0.11 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert (a != x).any()


def test_gate_pgd_lowers_gamma_and_the_runner_reports_it():
    from adasmooth.attacks import gate_pgd
    from adasmooth.evaluation import PGDAttack, evaluate_robustness

    torch.manual_seed(0)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    model = _composite(std, rob)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
        gamma0 = model.gamma(x)
    # with w = 1 the attack only pushes the gate toward "clean": γ must go down
    x_adv = gate_pgd(model, x, (y + 1) % 10, eps=0.1, w=1.0, steps=10, step_size=0.02,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model.gamma(x_adv).mean() < gamma0.mean()
    rep = evaluate_robustness(model, x, y, [PGDAttack(steps=3, gate_weight=0.5, name="gate-pgd"),
                                            PGDAttack(steps=3, gate_weight=0.5, loss="dlr-targeted", name="gate-pgd-t")],
                              eps=0.1, sanity_checks=False, progress=False)
    assert [a["type"] for a in rep.attacks] == ["gate-pgd", "gate-pgd"] and rep.attacks[0]["gate_weight"] == 0.5


class _LinearWithStages(torch.nn.Module):
    """Linear logits (easy to break inside a small l-inf ball) plus two conv stages for the gate to tap."""

    def __init__(self, scale: float):
        super().__init__()
        self.stage1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.stage2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(28 * 28, 10)
        with torch.no_grad():
            self.head.weight.mul_(scale * 28)

    def forward(self, x):
        features = self.stage2(self.stage1(x))
        return self.head(x.flatten(1)) + 0.0 * features.mean()


def test_gate_apgd_runs_the_official_apgd_on_the_composite_loss():
    from adasmooth.attacks.gate_apgd import gate_apgd
    from adasmooth.evaluation import GateAPGDAttack, evaluate_robustness

    torch.manual_seed(0)
    std, rob = _LinearWithStages(scale=3.0).eval(), _LinearWithStages(scale=1.0).eval()
    model = _composite(std, rob)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
        gamma0 = model.gamma(x)
    # the interface APGD calls returns the composite loss and its exact input gradient
    from adasmooth.attacks.adaptive import CompositeLossModel

    logits, loss, grad = CompositeLossModel(model, 0.5, "cpu").get_logits_loss_grad_xent(x, y)
    xr = x.clone().requires_grad_(True)
    g, h, gamma = model.components(xr)
    ref = composite_attack_loss(model.mix(g, h, gamma), gamma, y, w=0.5)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    assert torch.allclose(loss, ref.detach()) and torch.allclose(grad, ref_grad, atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-6) and (gamma0 == gamma.detach()).all()
    state = torch.get_rng_state()
    # w = 0, CE: the untrained composite is fragile, APGD breaks it
    x_ce = gate_apgd(model, x, y, eps=0.1, w=0.0, n_iter=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert (x_ce - x).abs().max() <= 0.1 + 1e-6 and x_ce.min() >= 0 and x_ce.max() <= 1
    with torch.no_grad():
        assert (model(x_ce).argmax(1) != y).float().mean() > 0.5
    rep = evaluate_robustness(model, x, y, [GateAPGDAttack(n_iter=5), GateAPGDAttack(loss="dlr-targeted", n_iter=5,
                                                                                       n_target_classes=2)],
                              eps=0.1, sanity_checks=False, progress=False)
    assert [a["name"] for a in rep.attacks] == ["gate-apgd-ce", "gate-apgd-t2"]
    assert rep.robust_accuracy <= min(a["accuracy"] for a in rep.attacks)


def _calibration_case():
    """A composite of two linear bases and 40 inputs labelled half by each base: clean accuracy depends on
    the gate's settings."""
    torch.manual_seed(0)
    std, rob = _LinearWithStages(scale=0.05).eval(), _LinearWithStages(scale=0.05).eval()
    model = _composite(std, rob)
    x = torch.rand(40, 1, 28, 28)
    with torch.no_grad():
        y = torch.cat([std(x[:20]).argmax(1), rob(x[20:]).argmax(1)])
    return model, x, y


def test_calibration_bisects_to_a_verified_setting_and_flags_a_fallback():
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate
    from adasmooth.evaluation import accuracy

    model, x, y = _calibration_case()
    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, steps=1),
                         robust_reference=0.0, verify=lambda m, xs, ys: torch.ones(len(ys), dtype=torch.bool))
    cleans = sorted({r["clean"] for r in rep["grid"]})
    assert len(cleans) >= 3
    threshold = cleans[len(cleans) // 2]
    calls = []

    def verify(m, xs, ys):  # a stand-in attack whose verdict falls as clean accuracy rises
        calls.append(1)
        return torch.full((len(ys),), accuracy(m, xs, ys) <= threshold + 1e-9)

    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1),
                         robust_reference=0.5, verify=verify)
    assert rep["target_met"] and not rep["fallback"]
    assert rep["chosen"]["clean"] == max(r["clean"] for r in rep["grid"] if r["clean"] <= threshold + 1e-9)
    assert len(calls) <= len(rep["grid"]).bit_length() + 1  # bisection, not a scan
    assert model.alpha_range == (rep["chosen"]["alpha_lo"], 1.0) and model.gamma_bias == rep["chosen"]["gamma_bias"]

    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, steps=1),
                         robust_reference=0.5, verify=lambda m, xs, ys: torch.zeros(len(ys), dtype=torch.bool))
    assert rep["fallback"] and not rep["target_met"] and rep["chosen"]["alpha_lo"] == 0.98  # the most robust grid point


def test_attack_plans_per_model_kind():
    from adasmooth.evaluation.plans import attack_plan

    std, rob = SmallResNet(width=4), SmallResNet(width=4)
    assert [a.name for a in attack_plan("base", autoattack=None)] == ["pgd20-ce"]
    mixed = [a.name for a in attack_plan("mixed", standard=std, robust=rob)]
    assert mixed == ["pgd20-ce", "transfer-from-standard", "transfer-from-robust", "autoattack-standard"]
    ada = attack_plan("adaptive", standard=std, robust=rob, gate_weights=(0.25, 0.5))
    gate = [a for a in ada if a.settings()["type"] == "gate-apgd"]
    assert [(a.loss, a.gate_weight) for a in gate] == [("ce", 0.25), ("dlr-targeted", 0.25), ("ce", 0.5),
                                                        ("dlr-targeted", 0.5)]
    assert len({a.name for a in ada}) == len(ada)  # names are unique: reports key on them
    with pytest.raises(ValueError, match="transfer"):
        attack_plan("mixed")
    fast = attack_plan("base", autoattack="apgd")[-1]  # AutoAttack's white-box half, official code
    assert fast.name == "autoattack-apgd-ce+apgd-t" and fast.settings()["attacks"] == ["apgd-ce", "apgd-t"]
    with pytest.raises(ValueError, match="gate_weights"):
        attack_plan("adaptive", standard=std, robust=rob, gate_weights=(1.5,))


def test_floor_calibration_bisects_over_alpha_floors_and_never_picks_a_failed_one():
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate

    model, x, y = _calibration_case()
    floors = []

    def verify(m, xs, ys):  # a stand-in attack: only floors of 0.7 and above hold
        floors.append(m.alpha_range[0])
        return torch.full((len(ys),), m.alpha_range[0] >= 0.7)

    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="floor"),
                         robust_reference=0.5, verify=verify)
    assert rep["target_met"] and not rep["fallback"] and rep["chosen"]["alpha_lo"] == 0.7
    assert len(floors) <= 4 and len(set(floors)) == len(floors)  # a bisection over 8 floors
    assert all(r["passed"] == (r["alpha_lo"] >= 0.7) for r in rep["checked"]) and rep["chosen"]["passed"]
    same_floor = [r for r in rep["grid"] if r["alpha_lo"] == 0.7]
    assert rep["chosen"]["clean"] == max(r["clean"] for r in same_floor)  # the floor's most clean-accurate setting
    with pytest.raises(ValueError, match="strategy"):
        calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, steps=1, strategy="greedy"),
                       robust_reference=0.5, verify=verify)


@pytest.mark.parametrize("lowest_floor_that_holds", [
    {(1.0, 1.0): 0.8, (2.0, 1.0): 0.6},  # the search over s_h
    {(1.0, 0.95): 0.9, (1.0, 1.0): 0.6, (2.0, 0.95): 0.95, (2.0, 1.0): 0.7},  # over s_h and the ceiling α_hi
    {(1.0, 0.95): 2.0, (1.0, 1.0): 0.5, (2.0, 0.95): 2.0, (2.0, 1.0): 0.5},  # one ceiling never holds
])
def test_floor_calibration_bisects_once_per_robust_scale_and_ceiling(lowest_floor_that_holds):
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate, rank_candidates

    holds = lowest_floor_that_holds  # a stand-in attack, by (s_h, α_hi)
    model, x, y = _calibration_case()
    model.robust_scale = 2.0
    checked = []

    def verify(m, xs, ys):
        key = (m.robust_scale, m.alpha_range[1])
        checked.append((*key, m.alpha_range[0]))
        return torch.full((len(ys),), m.alpha_range[0] >= holds[key])

    settings = GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="floor", robust_scales=(1.0, 2.0),
                                       alpha_his=tuple(sorted({hi for _, hi in holds})))
    rep = calibrate_gate(model, x, y, settings, robust_reference=0.5, verify=verify)
    grid = rep["grid"]
    assert {r["robust_scale"] for r in grid} == {1.0, 2.0}
    assert len({(r["robust_scale"], r["clean"]) for r in grid if r["alpha_lo"] == 0.0}) > 1  # s_h matters here
    # the answer worked out by hand: per (s_h, α_hi), the lowest floor that holds, at that floor's best candidate
    ranked = rank_candidates(grid, 0.5)
    firsts = [next(r for r in ranked if (r["robust_scale"], r["alpha_hi"], r["alpha_lo"]) == (*key, floor))
              for key, floor in holds.items() if floor <= 1]
    want = max(firsts, key=lambda r: r["clean"])
    chosen = rep["chosen"]
    assert chosen["passed"] and chosen["clean"] == want["clean"]
    assert (chosen["robust_scale"], chosen["alpha_hi"], chosen["alpha_lo"]) in [  # equal clean accuracy: either
        (r["robust_scale"], r["alpha_hi"], r["alpha_lo"]) for r in firsts if r["clean"] == want["clean"]]
    assert model.robust_scale == chosen["robust_scale"] and model.alpha_range == (chosen["alpha_lo"], chosen["alpha_hi"])
    assert checked == [(r["robust_scale"], r["alpha_hi"], r["alpha_lo"]) for r in rep["checked"]]  # checked as set
    assert all(r["passed"] == (r["alpha_lo"] >= holds[r["robust_scale"], r["alpha_hi"]]) for r in rep["checked"])
    assert len(checked) <= 4 * len(holds) and len(set(checked)) == len(checked)  # bisections of 8 floors, none twice


def test_a_ceiling_that_buys_clean_accuracy_but_breaks_robustness_gets_its_own_bisection():
    from adasmooth.calibration.gate import _floor_bisect, rank_candidates

    rows = [{"gamma_scale": 1.0, "gamma_bias": 0.0, "alpha_lo": lo, "alpha_hi": hi, "robust_scale": 1.0,
             "clean": round(0.95 - 0.1 * lo + (0.01 if hi == 0.95 else 0.0), 4), "robust_proxy": 0.9}
            for lo in (0.5, 0.6, 0.7, 0.8) for hi in (0.95, 1.0)]
    seen = []

    def check(row):  # a ceiling of 0.95 holds from floor 0.8, a ceiling of 1 from 0.6
        seen.append((row["alpha_hi"], row["alpha_lo"]))
        return {**row, "passed": row["alpha_lo"] >= (0.8 if row["alpha_hi"] == 0.95 else 0.6)}

    best = _floor_bisect(check, rank_candidates(rows, 0.5), None)
    assert (best["alpha_hi"], best["alpha_lo"], best["clean"]) == (1.0, 0.6, 0.89)  # beats 0.95 at floor 0.8 (0.88)
    assert len(seen) == len(set(seen)) <= 5


def test_calibration_without_robust_scales_keeps_the_models_own():
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate

    model, x, y = _calibration_case()
    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="floor"),
                         robust_reference=0.5, verify=lambda m, xs, ys: torch.ones(len(ys), dtype=torch.bool))
    assert {r["robust_scale"] for r in rep["grid"]} == {model.robust_scale}


def test_calibration_ranks_candidates_by_clean_accuracy_on_the_images_it_is_given():
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate
    from adasmooth.evaluation import accuracy

    model, x, y = _calibration_case()
    torch.manual_seed(1)
    xc = torch.rand(200, 1, 28, 28)
    with torch.no_grad():
        yc = model.robust(xc).argmax(1)  # on these images only the robust model is right
    settings = GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="scan")
    holds = lambda m, xs, ys: torch.ones(len(ys), dtype=torch.bool)
    rep = calibrate_gate(model, x, y, settings, robust_reference=0.0, verify=holds, clean_data=(xc, yc))
    assert rep["clean_n"] == 200 and rep["n"] == len(y)
    chosen = rep["chosen"]
    assert accuracy(model, xc, yc) == pytest.approx(chosen["clean"], abs=1e-6)  # measured where it was given
    assert chosen["clean"] == max(r["clean"] for r in rep["grid"]) > 0.9  # the robust side wins on these images
    own = calibrate_gate(model, x, y, settings, robust_reference=0.0, verify=holds)
    assert own["clean_n"] == len(y) and own["chosen"]["alpha_lo"] < chosen["alpha_lo"]


def test_candidates_tied_on_clean_accuracy_are_ranked_by_robustness_not_grid_order():
    from adasmooth.calibration.gate import rank_candidates

    def row(lo, hi, clean, proxy):
        return {"gamma_scale": 1.0, "gamma_bias": 0.0, "alpha_lo": lo, "alpha_hi": hi, "clean": clean,
                "robust_proxy": proxy}

    rows = [row(0.7, 0.95, 0.91, 0.73), row(0.7, 1.0, 0.91, 0.75), row(0.5, 0.95, 0.93, 0.70),
            row(0.8, 1.0, 0.90, 0.76), row(0.7, 1.0, 0.92, 0.60)]
    ranked = rank_candidates(rows, need=0.70)
    assert [(r["alpha_lo"], r["alpha_hi"], r["clean"]) for r in ranked] == [
        (0.5, 0.95, 0.93), (0.7, 1.0, 0.91), (0.7, 0.95, 0.91), (0.8, 1.0, 0.90)]  # 0.60 fails the proxy
    assert rank_candidates(rows, need=0.80) == []


class _MeanStaircase(torch.nn.Module):
    """Class 1 while the mean of the image rounded to quarters stays below 0.4, else class 0: a zero gradient
    everywhere (masked), and images at 0.3 stay class 1 under random noise of 0.2 but not when most pixels
    move up by 0.2 together."""

    def __init__(self):
        super().__init__()
        self.stage1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.stage2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        q = torch.round(x * 4) / 4
        features = self.stage2(self.stage1(q))
        m = q.mean((1, 2, 3))
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, 0], logits[:, 1] = 20 * (m - 0.4), 20 * (0.4 - m)
        return logits + 0.0 * features.mean()


def test_calibration_checks_add_square_which_sees_through_masked_gradients():
    from adasmooth.calibration.gate import gate_attack_set_robust_mask

    torch.manual_seed(0)
    std, rob = _MeanStaircase().eval(), _MeanStaircase().eval()
    model = _composite(std, rob)
    x = 0.3 + 0.02 * (2 * torch.rand(20, 1, 28, 28) - 1)
    y = torch.ones(20, dtype=torch.long)
    common = {"eps": 0.2, "standard": std, "n_iter": 5, "weights": (0.5,)}
    gradient_only = gate_attack_set_robust_mask(model, x, y, **common)
    with_square = gate_attack_set_robust_mask(model, x, y, autoattack=("square",), square_queries=200, **common)
    assert gradient_only.all()  # the gradient attacks see a flat loss
    assert not with_square.any()  # the gradient-free search does not
    with pytest.raises(ValueError, match="sub-attacks"):
        gate_attack_set_robust_mask(model, x, y, autoattack=("sqaure",), **common)


@pytest.mark.slow  # the official APGD, FAB-T and Square on a small model
def test_robust_reference_runs_the_same_official_sub_attacks_as_the_checks():
    from adasmooth.calibration.gate import robust_reference

    torch.manual_seed(0)
    robust = _MeanStaircase().eval()
    x = 0.3 + 0.02 * (2 * torch.rand(20, 1, 28, 28) - 1)
    y = torch.ones(20, dtype=torch.long)
    assert robust_reference(robust, x, y, eps=0.2, n_iter=5) == 1.0  # APGD sees a flat loss
    assert robust_reference(robust, x, y, eps=0.2, n_iter=5, autoattack=("fab-t", "square"), square_queries=200) == 0.0
    with pytest.raises(ValueError, match="sub-attacks"):
        robust_reference(robust, x, y, eps=0.2, autoattack=("sqaure",))
