"""The paper's mixer recipe: the γ pipeline (training clamp, BatchNorm momentum), the official-APGD training
attack, and the gate's separation diagnostics."""

import functools
import json
import math

import pytest
import torch
from conftest import assert_same_state
from torch import nn

from adasmooth.mixer import AdaptiveMixedClassifier
from adasmooth.models import build


class FixedGate(nn.Module):
    """A gate whose raw scores are given: the γ pipeline can then be checked by hand."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw

    def forward(self, standard_features, robust_features):
        return self.raw.clone()


def _bases():
    torch.manual_seed(0)
    return (build("small_resnet", in_channels=1, num_classes=10, width=4).eval(),
            build("small_resnet", in_channels=1, num_classes=10, width=4).eval())


def test_gamma_clamp_and_momentum_follow_the_papers_formula_on_a_hand_computed_batch():
    std, rob = _bases()
    model = AdaptiveMixedClassifier(std, rob, FixedGate(torch.tensor([0.0, 0.0, 0.0, 10.0])), standard_layers=["stage1"],
                                    robust_layers=["stage1"], gamma_scale=2.0, gamma_bias=0.4, gamma_clamp=0.6,
                                    bn_momentum=0.01).train()
    gamma = model.gamma(torch.rand(4, 1, 28, 28))
    # mean 2.5, unbiased std 5: clamped to [2.5 - 3, 2.5 + 3], so 10 -> 5.5
    clamped = torch.tensor([0.0, 0.0, 0.0, 5.5])
    mean, var = clamped.mean(), clamped.var(unbiased=False)  # 1.375, 5.671875
    expected = 2.0 * (clamped - mean) / torch.sqrt(var + 1e-5) + 0.4
    assert torch.allclose(gamma, expected, atol=1e-5)
    assert model.gamma_bn.running_mean.item() == pytest.approx(0.01 * 1.375)
    assert model.gamma_bn.running_var.item() == pytest.approx(0.99 + 0.01 * 5.671875 * 4 / 3)
    model.eval()  # evaluation never clamps: the raw 10 goes through the running statistics
    g_eval = model.gamma(torch.rand(4, 1, 28, 28))
    rm, rv = model.gamma_bn.running_mean, model.gamma_bn.running_var
    assert g_eval[3].item() == pytest.approx((2.0 * (10 - rm) / torch.sqrt(rv + 1e-5) + 0.4).item(), rel=1e-5)
    with pytest.raises(ValueError, match="gamma_clamp"):
        AdaptiveMixedClassifier(std, rob, FixedGate(torch.zeros(2)), standard_layers=["stage1"],
                                robust_layers=["stage1"], gamma_clamp=0.0)
    assert math.isclose(model.describe()["bn_momentum"], 0.01)


class LinearComposite(nn.Module):
    """Four classes with logits (0, a·x, -5, -5) from both bases and a gate score γ = -a·x: for label 0 the
    gate-aware loss (1-w)·CE + w·BCE(γ, 1) grows with a·x, so its l-inf worst case is x + ε·sign(a)."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def components(self, x):
        s = x.flatten(1) @ self.a
        z = torch.stack([torch.zeros_like(s), s, torch.full_like(s, -5.0), torch.full_like(s, -5.0)], 1)
        return z, z, -s

    def mix(self, g, h, gamma):
        return torch.log_softmax(g, 1)

    def forward(self, x):
        return self.mix(*self.components(x))


def test_training_attack_is_the_official_apgd_and_finds_the_closed_form_worst_case():
    from adasmooth.attacks.apgd_training import apgd_training_attack

    torch.manual_seed(0)
    a = torch.randn(1 * 6 * 6) * 0.1
    model = LinearComposite(a)
    x = 0.3 + 0.4 * torch.rand(5, 1, 6, 6)  # away from the box, so the corner is not clipped
    y = torch.zeros(5, dtype=torch.long)
    out = apgd_training_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0), copies=1,
                               iters_df=30.0, max_iters=40, eps_range=(1.0, 1.0), w_max=0.4)
    assert out.x.shape == x.shape and torch.equal(out.y, y) and out.iters[0] <= 40
    assert torch.allclose(out.x, x + 0.1 * a.sign().view(1, 1, 6, 6), atol=1e-6)
    assert (out.w >= 0).all() and (out.w <= 0.4).all()


def test_training_attack_copies_are_targeted_seeded_and_inside_their_own_balls():
    from adasmooth.attacks.apgd_training import apgd_training_attack

    torch.manual_seed(1)
    model = LinearComposite(torch.randn(36) * 0.1)
    x, y = torch.rand(6, 1, 6, 6), torch.zeros(6, dtype=torch.long)
    kw = {"eps": 0.2, "copies": 3, "iters_df": 5.0, "eps_range": (0.4, 1.1)}
    out = apgd_training_attack(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    again = apgd_training_attack(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out.x, again.x) and out.iters == again.iters
    assert out.x.shape == (18, 1, 6, 6) and torch.equal(out.y, y.repeat(3))
    assert out.targeted.tolist() == [False] * 6 + [True] * 12
    dist = (out.x - x.repeat(3, 1, 1, 1)).abs().flatten(1).amax(1)
    assert (dist <= out.eps + 1e-6).all() and (out.eps >= 0.08 - 1e-6).all() and (out.eps <= 0.22 + 1e-6).all()
    assert out.x.min() >= 0 and out.x.max() <= 1
    with pytest.raises(ValueError, match="copies must be >= 1"):
        apgd_training_attack(model, x, y, eps=0.1, generator=torch.Generator(), copies=0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        apgd_training_attack(model, x, y, eps=0.1, generator=torch.Generator(), iters_df=0.0)


def _small_composite(seed=0):
    from adasmooth.mixer import MixingNetwork

    torch.manual_seed(seed)
    std, rob = build("small_resnet", in_channels=1, num_classes=10, width=4).eval(), \
        build("small_resnet", in_channels=1, num_classes=10, width=4).eval()
    gate = MixingNetwork.from_models(std, rob, standard_layers=["stage1"], robust_layers=["stage1"],
                                     input_shape=(1, 28, 28), width=8, blocks=1)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=["stage1"], robust_layers=["stage1"],
                                   gamma_clamp=0.6, bn_momentum=0.01)


def test_fit_mixer_with_the_apgd_copies_trains_and_resumes_to_the_same_weights(tmp_path):
    import json

    from adasmooth.config import MixerConfig
    from adasmooth.training import fit_mixer

    cfg = MixerConfig(epochs=1, batch_size=16, lr=1e-2, checkpoint_every=2, attack_copies=3, attack_iters_df=3.0,
                      attack_max_iters=4, tensorboard=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g)
    full = _small_composite()
    before = {k: v.clone() for k, v in full.gate.state_dict().items()}
    summary = fit_mixer(full, x, y, cfg, tmp_path / "full", eps=0.1, progress=False)
    assert summary["steps"] == 3
    assert any(not torch.equal(before[k], v) for k, v in full.gate.state_dict().items())
    fit_mixer(_small_composite(), x, y, cfg, tmp_path / "split", eps=0.1, progress=False, max_steps=2)
    resumed = _small_composite()
    fit_mixer(resumed, x, y, cfg, tmp_path / "split", eps=0.1, progress=False, resume=True)
    assert_same_state(full.gate, resumed.gate)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)


def test_weighted_mixer_loss_balances_clean_and_attacked_examples():
    from adasmooth.training import mixer_loss

    log_p = torch.log_softmax(torch.randn(4, 10), 1)
    gamma, y = torch.tensor([0.5, -1.0, 2.0, 0.1]), torch.tensor([1, 2, 3, 4])
    t = torch.tensor([0.0, 1.0, 1.0, 1.0])
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])  # one clean example against three attacked copies
    per = mixer_loss(log_p[:1], gamma[:1], y[:1], t[:1], c_bce=1.5, c_ce=0.0, c_prod=0.0)
    rest = mixer_loss(log_p[1:], gamma[1:], y[1:], t[1:], c_bce=1.5, c_ce=0.0, c_prod=0.0)
    got = mixer_loss(log_p, gamma, y, t, c_bce=1.5, c_ce=0.0, c_prod=0.0, weights=w)
    assert torch.allclose(got, (3 * per + 3 * rest) / 6)


def test_auroc_of_a_signature_reading_gate_is_one_and_of_a_constant_gate_one_half():
    from adasmooth.evaluation.separation import auroc

    clean, attacked = torch.rand(50), torch.rand(60) + 2.0  # a gate that reads a planted signature
    assert auroc(attacked, clean) == 1.0 and auroc(clean, attacked) == 0.0
    assert auroc(torch.full((7,), 0.8), torch.full((9,), 0.8)) == 0.5  # a constant gate
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])) == 0.75
    with pytest.raises(ValueError):
        auroc(torch.tensor([]), clean)


def test_gate_separation_scores_final_iterates_of_every_example():
    from adasmooth.evaluation.separation import gate_separation

    model = _small_composite().eval()
    model.alpha_range = (0.5, 1.0)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    sep = gate_separation(model, x, y, eps=0.1, weights=(0.0, 2.0), n_iter=3)
    assert set(sep.auroc) == {0.0, 2.0}
    # every example counts: the AUROC is the share of (attacked, clean) pairs the gate orders right
    a_clean, a_att = sep.alpha_clean, sep.alpha_attacked[0.0]
    pairs = (a_att[:, None] > a_clean[None, :]).float() + 0.5 * (a_att[:, None] == a_clean[None, :]).float()
    assert sep.auroc[0.0] == pytest.approx(float(pairs.mean()))
    with torch.no_grad():  # a gate that ignores its input cannot separate: exactly one half, whatever w
        model.gate.fc.weight.zero_()
    flat = gate_separation(model, x, y, eps=0.1, weights=(0.0, 2.0), n_iter=3)
    assert flat.auroc == {0.0: 0.5, 2.0: 0.5}
    assert sep.alpha_attacked[2.0].shape == (6,) and ((sep.alpha_clean >= 0.5) & (sep.alpha_clean <= 1.0)).all()
    d = sep.to_dict()
    assert set(d["auroc"]) == {"w=0", "w=2"} and d["settings"]["n"] == 6


def test_gate_stages_downsample_and_round_trip_through_their_config():
    from adasmooth.mixer import MixingNetwork
    from adasmooth.models.cost import count_parameters, forward_flops, gate_cost

    gate = MixingNetwork([8, 16], width=4, blocks=1, stages=2)
    assert gate.config() == {"type": "MixingNetwork", "depth_channels": [8, 16], "width": 4, "blocks": 1, "stages": 2}
    again = MixingNetwork.from_config(gate.config())
    assert count_parameters(again) == count_parameters(gate) > count_parameters(MixingNetwork([8, 16], width=4, blocks=1))
    fs, fr = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)], [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    assert gate(fs, fr).shape == (2,)
    # a hand count: one 3x3 conv of 1 -> 2 channels on a 4x4 output is 2 * (4*4*2) * 9 FLOPs
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert forward_flops(conv, lambda: conv(torch.zeros(1, 1, 4, 4))) == 2 * 32 * 9
    model = _small_composite().train()
    cost = gate_cost(model, (1, 28, 28))
    assert cost["gate"]["parameters"] == count_parameters(model.gate) and cost["gate"]["flops"] > 0
    assert cost["gate_over_bases"]["parameters"] > 0 and model.training  # its mode is restored


def _calibration_case():
    from adasmooth.mixer import MixingNetwork

    torch.manual_seed(0)
    std, rob = (build("small_resnet", in_channels=1, num_classes=10, width=4).eval() for _ in range(2))
    gate = MixingNetwork.from_models(std, rob, standard_layers=["stage1"], robust_layers=["stage1"],
                                     input_shape=(1, 28, 28), width=8, blocks=1)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=["stage1"], robust_layers=["stage1"]).eval()
    x = torch.rand(40, 1, 28, 28)
    with torch.no_grad():  # labels half from each base model: clean accuracy depends on the gate's settings
        y = torch.cat([std(x[:20]).argmax(1), rob(x[20:]).argmax(1)])
    return model, x, y


def test_scan_calibration_never_picks_a_candidate_that_failed_and_records_every_check():
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate

    model, x, y = _calibration_case()

    def verify(m, xs, ys):  # not monotone in clean accuracy: only bias 0.8 with alpha_hi 1 holds
        ok = m.gamma_bias == 0.8 and m.alpha_range[1] == 1.0
        return torch.full((len(ys),), ok)

    rep = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="scan", gamma_scales=(1.0, 2.0), alpha_his=(0.95, 1.0), max_checks=1000),
                         robust_reference=0.5, verify=verify)
    chosen = rep["chosen"]
    assert chosen["passed"] and chosen["gamma_bias"] == 0.8 and chosen["alpha_hi"] == 1.0 and not rep["fallback"]
    assert all(not r["passed"] for r in rep["checked"][:-1]) and rep["checked"][-1] == chosen
    # candidates are checked most clean-accurate first: the chosen one is the best of those that hold
    passing = [r for r in rep["grid"] if r["gamma_bias"] == 0.8 and r["alpha_hi"] == 1.0]
    assert chosen["clean"] == max(r["clean"] for r in passing)
    assert {r["gamma_scale"] for r in rep["grid"]} == {1.0, 2.0} and model.gamma_scale == chosen["gamma_scale"]
    assert (model.gamma_bias, model.alpha_range) == (0.8, (chosen["alpha_lo"], 1.0))
    nothing = calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, steps=1, strategy="scan"),
                             robust_reference=0.5, verify=lambda m, xs, ys: torch.zeros(len(ys), dtype=torch.bool))
    assert nothing["fallback"] and not nothing["target_met"]


def test_a_calibration_killed_part_way_resumes_from_its_journal_without_attacking_again(tmp_path):
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate
    from adasmooth.state import CalibrationJournal

    model, x, y = _calibration_case()
    calls = []

    def verify(m, xs, ys):  # only bias 0.8 holds, so a scan checks several candidates before it
        calls.append((m.gamma_bias, m.alpha_range))
        return torch.full((len(ys),), m.gamma_bias == 0.8)

    def run(journal, verify=verify):
        return calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="scan", max_checks=1000),
                              robust_reference=0.5, verify=verify, journal=journal)

    uninterrupted = run(None)
    n_checks = len(calls)
    assert n_checks >= 2

    class Killed(Exception):
        pass

    def dies_at_the_second_check(m, xs, ys):
        if len(calls) == n_checks + 1:
            raise Killed
        return verify(m, xs, ys)

    path = tmp_path / "journal.json"
    with pytest.raises(Killed):
        run(CalibrationJournal(path, "k"), dies_at_the_second_check)
    assert len(CalibrationJournal(path, "k").entries) == 1  # the finished check is on disk
    resumed = run(CalibrationJournal(path, "k"))
    assert len(calls) == 2 * n_checks  # the first check was read back, not attacked again
    assert resumed["chosen"] == uninterrupted["chosen"] and resumed["checked"] == uninterrupted["checked"]
    calls.clear()
    run(CalibrationJournal(path, "another model"))  # a journal written for something else is not used
    assert len(calls) == n_checks


def test_a_check_killed_part_way_continues_from_its_saved_state_and_the_state_is_dropped_when_it_ends(tmp_path):
    from adasmooth.calibration.gate import GateCalibrationSettings, calibrate_gate
    from adasmooth.state import CalibrationJournal

    model, x, y = _calibration_case()
    resumes = []

    class Killed(Exception):
        pass

    def verify(m, xs, ys, stop_below=None, desc="", resume=None, on_piece=None, die=False):
        resumes.append(resume)
        on_piece({"attack": 0, "pieces_done": 1, "robust": [1] * len(ys), "start": list(range(len(ys)))})
        if die:
            raise Killed
        return torch.full((len(ys),), m.gamma_bias == 0.8)

    def run(journal, die=False):
        check = functools.partial(verify, die=die)
        check.stops_early = check.resumable = True
        return calibrate_gate(model, x, y, GateCalibrationSettings(eps=0.0, keep_robust=1.0, steps=1, strategy="scan",
                                                                   max_checks=1000), robust_reference=0.5,
                              verify=check, journal=journal)

    path = tmp_path / "journal.json"
    with pytest.raises(Killed):
        run(CalibrationJournal(path, "k"), die=True)
    (name, state), = CalibrationJournal(path, "k").entries.items()
    assert name.startswith("part-way check ") and state["pieces_done"] == 1
    resumes.clear()
    run(CalibrationJournal(path, "k"))
    assert resumes[0] == state and all(r is None for r in resumes[1:])  # only the interrupted check continues
    assert not any(k.startswith("part-way") for k in CalibrationJournal(path, "k").entries)


def test_mixer_calibration_reads_the_validation_split_only(tiny_fmnist, tmp_path, monkeypatch):
    from adasmooth import data as data_mod
    from adasmooth.config import config_from_dict
    from adasmooth.workflows.calibrate import calibrate_mixer_and_save

    model, _, _ = _calibration_case()
    seen = []
    real_load = data_mod.load

    def recording_load(name, split, **kw):
        seen.append(split)
        if split == "test":
            raise AssertionError("calibration read the test split")
        return real_load(name, split, **kw)

    monkeypatch.setattr(data_mod, "load", recording_load)
    cfg = config_from_dict({"data": {"name": "fashion-mnist", "root": str(tiny_fmnist)}})
    summary = calibrate_mixer_and_save(model, cfg, model.robust, tmp_path / "mixer", metadata={}, n_calibrate=20,
                                       verify_iters=2)
    assert seen and set(seen) == {"val"} and "calibrated on 20 validation points" in summary
    assert (tmp_path / "mixer.safetensors").is_file()
    assert not (tmp_path / "mixer-calibration-journal.json").exists()  # finished: the record is in calibration.json
    assert not list(tmp_path.glob("mixer-calibration-replay*"))  # and the replayed examples are gone with it
    assert "replay_pool" in json.loads((tmp_path / "calibration.json").read_text())

    # keep_state (fit-mixer's, while its separation runs after the save): the journal stays, so a rerun killed
    # after the save reads every check back instead of attacking again; discard_calibration_state removes it
    from adasmooth.calibration import gate as gate_mod
    from adasmooth.workflows.calibrate import discard_calibration_state

    kept = tmp_path / "kept"
    kept.mkdir()
    first = calibrate_mixer_and_save(model, cfg, model.robust, kept / "mixer", metadata={}, n_calibrate=20,
                                     verify_iters=2, keep_state=True)
    assert (kept / "mixer-calibration-journal.json").is_file()
    monkeypatch.setattr(gate_mod, "gate_attack_set_robust_mask", lambda *a, **k: pytest.fail("a check ran again"))
    again = calibrate_mixer_and_save(model, cfg, model.robust, kept / "mixer", metadata={}, n_calibrate=20,
                                     verify_iters=2, keep_state=True)
    assert again == first
    discard_calibration_state(kept / "mixer")
    assert sorted(p.name for p in kept.iterdir()) == ["calibration.json", "mixer.json", "mixer.safetensors"]


def test_bad_mixer_configs_are_clear_errors(tmp_path, capsys):
    from adasmooth.cli import main
    from adasmooth.config import ConfigError, config_from_dict

    for section, message in (({"attack_copies": 0}, "attack_copies"), ({"attack_iters_df": 0.0}, "attack_iters_df"),
                             ({"attack_eps_low": 1.2, "attack_eps_high": 1.1}, "attack_eps_low"),
                             ({"stages": -1}, "stages"), ({"standard_layers": ["stage1"]}, "same number")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"mixer": section})
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixer:\n  standard_layers: [stage9]\n  robust_layers: [stage1]\n")
    assert main(["fit-mixer", "--config", str(bad), "--out", str(tmp_path / "m"), "--max-steps", "1"]) == 2
    assert "no submodule named 'stage9'; close matches: stage3" in capsys.readouterr().err


def test_square_training_copies_fool_a_linear_composite_inside_the_ball_and_are_seeded():
    from adasmooth.attacks.apgd_training import square_training_copies

    signs = torch.tensor([1.0, -1.0]).repeat(18)[torch.randperm(36, generator=torch.Generator().manual_seed(0))]
    a = 0.1 * signs  # a·1 = 0, so x = 0.5 - c·a/|a|² has a·x = -c: label 0 wins by the margin c
    model = LinearComposite(a)
    c = torch.linspace(0.05, 0.15, 8)
    x = (0.5 - c[:, None] * a / a.square().sum()).view(8, 1, 6, 6)
    y = torch.zeros(8, dtype=torch.long)
    assert (model(x).argmax(1) == 0).all()  # clean: all right; the worst case in the ball (+0.36) fools all
    kw = {"eps": 0.1, "copies": 2, "queries": 300}
    out = square_training_copies(model, x, y, generator=torch.Generator().manual_seed(5), **kw)
    again = square_training_copies(model, x, y, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(out.x, again.x) and out.iters == [300, 300]
    assert out.x.shape == (16, 1, 6, 6) and torch.equal(out.y, y.repeat(2))
    assert not out.targeted.any() and (out.w == 0).all() and torch.allclose(out.eps, torch.full((16,), 0.1))
    assert (out.x - x.repeat(2, 1, 1, 1)).abs().amax() <= 0.1 + 1e-6 and out.x.min() >= 0 and out.x.max() <= 1
    assert (model(out.x).argmax(1) != 0).float().mean() >= 0.75  # the random search finds the flips, no gradient
    with pytest.raises(ValueError, match="queries >= 1"):
        square_training_copies(model, x, y, eps=0.1, generator=torch.Generator(), queries=0)


def test_fab_training_copies_reach_the_closed_form_nearest_crossing_and_fall_back_where_fab_fails():
    from adasmooth.attacks.apgd_training import fab_training_copies

    signs = torch.tensor([1.0, -1.0]).repeat(18)[torch.randperm(36, generator=torch.Generator().manual_seed(0))]
    a = 0.1 * signs
    model = LinearComposite(a)
    c = torch.linspace(0.05, 0.15, 8)
    x = (0.5 - c[:, None] * a / a.square().sum()).view(8, 1, 6, 6)
    y = torch.zeros(8, dtype=torch.long)
    out = fab_training_copies(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(5), n_iter=10)
    # the nearest l-inf crossing of a·x = 0 lies at distance c/|a|_1 (0.014 to 0.042): FAB-T finds it, the
    # 2nd-ranked class (label 1) wins there, far inside the 0.1-ball
    dist = (out.x - x).flatten(1).abs().amax(1)
    assert torch.allclose(dist, c / a.abs().sum(), rtol=0.05)
    assert (model(out.x).argmax(1) == 1).all() and out.targeted.all() and out.iters == [10]
    # a radius below the crossing: the step is projected onto the ball and the label holds
    near = fab_training_copies(model, x, y, eps=0.01, generator=torch.Generator().manual_seed(5), n_iter=10)
    assert (near.x - x).abs().amax() <= 0.01 + 1e-6 and (model(near.x).argmax(1) == 0).all()
    # misclassified images (nothing to cross) come back clean from FAB: they take the fallback's rows
    wrong = torch.ones(8, dtype=torch.long)
    fallback = (x + 0.05).clamp(0, 1)
    back = fab_training_copies(model, x, wrong, eps=0.1, generator=torch.Generator().manual_seed(5), fallback=fallback)
    assert torch.equal(back.x, fallback)
    with pytest.raises(ValueError, match="n_iter >= 1"):
        fab_training_copies(model, x, y, eps=0.1, generator=torch.Generator(), n_iter=0)


def test_fit_mixer_with_fab_copies_adds_one_targeted_copy_per_image_and_resumes_old_runs(tmp_path):
    from adasmooth.config import MixerConfig
    from adasmooth.training import fit_mixer
    from adasmooth.training.gate_fitting import default_training_attack

    cfg = MixerConfig(epochs=1, batch_size=16, lr=1e-2, checkpoint_every=2, attack_copies=1, attack_iters_df=3.0,
                      attack_max_iters=4, attack_fab_copies=1, attack_fab_iters=3, tensorboard=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    model = _small_composite().eval()  # as fit_mixer attacks: in eval mode
    copies = default_training_attack(cfg, 0.1)(model, x, y, torch.Generator().manual_seed(1))
    assert len(copies.y) == 32 and copies.iters[-1] == 3 and copies.targeted[16:].all()
    assert (copies.x[16:] - x).abs().amax() <= 0.1 + 1e-6
    # a run saved before the FAB keys existed resumes: the keys at their defaults stay out of the resume key
    old = MixerConfig(epochs=1, batch_size=16, checkpoint_every=1, attack_copies=1, attack_iters_df=3.0,
                      attack_max_iters=4, tensorboard=False)
    fit_mixer(_small_composite(), x, y, old, tmp_path / "old", eps=0.1, progress=False, max_steps=1)
    import json

    state = json.loads((tmp_path / "old" / "mixer-last.json").read_text())
    assert "attack_fab_copies" not in state["settings"]["mixer"]


def test_fit_mixer_with_square_copies_trains_on_both_kinds_and_resumes_to_the_same_weights(tmp_path):
    from adasmooth.config import MixerConfig
    from adasmooth.training import fit_mixer

    cfg = MixerConfig(epochs=1, batch_size=16, lr=1e-2, checkpoint_every=2, attack_copies=1, attack_iters_df=3.0,
                      attack_max_iters=4, attack_square_copies=1, attack_square_queries=6, tensorboard=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g)
    seen = []
    from adasmooth.attacks import apgd_training

    real = apgd_training.square_training_copies

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append(len(out.y))
        return out

    import adasmooth.training.gate_fitting as training_gate
    training_gate.square_training_copies, saved = spy, training_gate.square_training_copies
    try:
        full = _small_composite()
        assert fit_mixer(full, x, y, cfg, tmp_path / "full", eps=0.1, progress=False)["steps"] == 3
        fit_mixer(_small_composite(), x, y, cfg, tmp_path / "split", eps=0.1, progress=False, max_steps=2)
        resumed = _small_composite()
        fit_mixer(resumed, x, y, cfg, tmp_path / "split", eps=0.1, progress=False, resume=True)
    finally:
        training_gate.square_training_copies = saved
    assert seen == [16] * 6  # one Square copy of every batch, in the three steps of each run
    assert_same_state(full.gate, resumed.gate)


def test_init_from_starts_the_gate_from_a_saved_mixer_and_refuses_another_architecture(tmp_path):
    from adasmooth.mixer import MixingNetwork, save_adaptive
    from adasmooth.workflows.mixer_jobs import init_gate_from

    saved = _small_composite(seed=0)
    with torch.no_grad():
        saved.gamma_bn.running_mean.fill_(0.25)
    save_adaptive(tmp_path / "m", saved)
    fresh = _small_composite(seed=1)
    fresh.standard.load_state_dict(saved.standard.state_dict())
    fresh.robust.load_state_dict(saved.robust.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(saved.gate.state_dict().values(), fresh.gate.state_dict().values()))
    init_gate_from(fresh, tmp_path / "m")
    for (k, a), b in zip(saved.gate.state_dict().items(), fresh.gate.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(fresh.gamma_bn.running_mean, saved.gamma_bn.running_mean)
    wider = AdaptiveMixedClassifier(saved.standard, saved.robust, MixingNetwork.from_models(
        saved.standard, saved.robust, standard_layers=["stage1"], robust_layers=["stage1"], input_shape=(1, 28, 28),
        width=16, blocks=1), standard_layers=["stage1"], robust_layers=["stage1"])
    with pytest.raises(ValueError, match="init_from"):
        init_gate_from(wider, tmp_path / "m")


def test_square_copies_and_training_subset_settings_are_checked():
    from adasmooth.config import ConfigError, config_from_dict

    for section, message in (({"attack_square_copies": -1}, "attack_square_copies"),
                             ({"attack_square_queries": 0}, "attack_square_queries"),
                             ({"attack_square_copies": 1, "attack_method": "pgd"}, "needs attack_method apgd"),
                             ({"train_examples": 0}, "train_examples"),
                             ({"gate_target": "clean"}, "gate_target' must be attacked or useful"),
                             ({"standard_alone_weight": 0}, "standard_alone_weight"),
                             ({"calibration_robust_scales": [1.0, 0.0]}, "calibration_robust_scales"),
                             ({"calibration_clean": "test"}, "calibration_clean' must be split or points")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"mixer": section})
    assert config_from_dict({"mixer": {"calibration_robust_scales": [1, 2]}}).mixer.calibration_robust_scales == (1.0, 2.0)


def test_gate_separation_on_square_iterates_scores_every_example():
    from adasmooth.evaluation.separation import gate_separation

    model = _small_composite().eval()
    model.alpha_range = (0.5, 1.0)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    sep = gate_separation(model, x, y, eps=0.1, weights=(0.0,), n_iter=2, square_queries=20)
    assert sep.alpha_square.shape == (6,)
    pairs = (sep.alpha_square[:, None] > sep.alpha_clean[None, :]).float() \
        + 0.5 * (sep.alpha_square[:, None] == sep.alpha_clean[None, :]).float()
    assert sep.auroc_square == pytest.approx(float(pairs.mean()))
    assert sep.to_dict()["square"]["queries"] == 20
    again = gate_separation(model, x, y, eps=0.1, weights=(0.0,), n_iter=2, square_queries=20)
    assert torch.equal(again.alpha_square, sep.alpha_square)  # seeded


def test_gate_separation_keeps_finished_batches_and_a_rerun_computes_only_what_is_missing(tmp_path, monkeypatch):
    from adasmooth.evaluation import separation as sep_mod

    model = _small_composite().eval()
    model.alpha_range = (0.5, 1.0)
    x, y = torch.rand(7, 1, 28, 28), torch.randint(0, 10, (7,))
    opts = {"eps": 0.1, "weights": (0.0, 2.0), "n_iter": 2, "square_queries": 10, "batch_size": 3}
    plain = sep_mod.gate_separation(model, x, y, **opts)
    cached = sep_mod.gate_separation(model, x, y, cache_dir=tmp_path, **opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"chunk-0000{c}.json" for c in range(3)]  # 3 + 3 + 1
    assert torch.equal(cached.alpha_square, plain.alpha_square) and cached.auroc == plain.auroc
    assert torch.equal(cached.alpha_attacked[2.0], plain.alpha_attacked[2.0])

    runs = []
    real = sep_mod.apgd_composite_run
    monkeypatch.setattr(sep_mod, "apgd_composite_run", lambda m, xb, *a, **k: runs.append(len(xb)) or real(m, xb, *a, **k))
    (tmp_path / "chunk-00001.json").unlink()  # as if killed during the second batch
    resumed = sep_mod.gate_separation(model, x, y, cache_dir=tmp_path, **opts)
    assert runs == [3, 3]  # the second batch only, once per w
    assert torch.equal(resumed.alpha_square, plain.alpha_square) and resumed.auroc == plain.auroc
    runs.clear()
    other = sep_mod.gate_separation(model, x, y, cache_dir=tmp_path, **{**opts, "n_iter": 3})  # other settings
    assert runs == [3, 3, 3, 3, 1, 1] and other.settings["n_iter"] == 3  # nothing cached is reused


def test_fab_t_separation_scores_only_what_fab_finds_within_eps():
    from adasmooth.evaluation.separation import fab_t_found, gate_separation

    model = _small_composite().eval()
    model.alpha_range = (0.5, 1.0)
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.no_grad():
        y = model(x).argmax(1)  # every example starts correct, so FAB-T attacks all of them
    found = fab_t_found(model, x, y, eps=0.3, n_target_classes=2, n_iter=10)
    assert len(found) > 0  # an untrained composite at eps 0.3 is easy to fool
    # each found example is misclassified and within eps of some clean image
    with torch.no_grad():
        labels = model(found).argmax(1)
    dists = (found[:, None] - x[None]).flatten(2).abs().amax(2)
    nearest = dists.argmin(1)
    assert (dists.min(1).values <= 0.3 + 1e-6).all() and (labels != y[nearest]).all()
    sep = gate_separation(model, x, y, eps=0.3, weights=(0.0,), n_iter=2, fab_targets=2)
    d = sep.to_dict()
    assert d["fab_t"]["found"] == len(sep.alpha_fab) <= 8 and d["settings"]["fab_targets"] == 2
    assert len(sep.alpha_fab) > 0 and 0.0 <= d["fab_t"]["auroc"] <= 1.0
    tight = gate_separation(model, x, y, eps=1e-4, weights=(0.0,), n_iter=2, fab_targets=2)
    assert tight.to_dict()["fab_t"]["found"] == 0 and tight.auroc_fab is None  # nothing within a tiny eps


def test_usefulness_auroc_scores_the_inputs_where_only_the_standard_model_is_right():
    from adasmooth.evaluation.separation import auroc, usefulness_auroc

    model = _small_composite().eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g, h, gamma = model.components(x)
    s, r = g.argmax(1), h.argmax(1)
    assert (s != r).any()
    y = torch.where(torch.arange(40) < 20, s, r)  # the first 20 (where the bases differ): standard alone right
    only_std = (torch.arange(40) < 20) & (s != r)
    got = usefulness_auroc(model, x, y, batch_size=16, shares=(0.0, 1.0))
    a = model.alpha_from_gamma(gamma).detach()
    assert got["standard_only_right"] == int(only_std.sum())
    assert got["auroc_alpha"] == pytest.approx(auroc(a[~only_std], a[only_std]))
    conf = torch.softmax(h, 1).max(1).values.detach()
    assert got["auroc_robust_confidence"] == pytest.approx(auroc(conf[~only_std], conf[only_std]))
    switch = got["switch_clean_accuracy"]  # the standard model on no input, then on every input
    assert switch["0"]["alpha"] == switch["0"]["robust_confidence"] == pytest.approx(float((r == y).float().mean()))
    assert switch["1"]["alpha"] == switch["1"]["robust_confidence"] == pytest.approx(float((s == y).float().mean()))
    with pytest.raises(ValueError, match="standard model alone"):
        usefulness_auroc(model, x, r)


def test_evaluate_reports_the_gates_usefulness_over_the_whole_split(tmp_path, monkeypatch):
    import sys

    from adasmooth.config import config_from_dict
    from adasmooth.evaluation import correct_mask
    from adasmooth.evaluation.separation import usefulness_auroc
    from adasmooth.workflows.evaluate import EvaluateResult, EvaluationTarget, evaluate_target, gate_usefulness

    model = _small_composite().eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s, r = model.standard(x).argmax(1), model.robust(x).argmax(1)
    y = torch.where(torch.arange(40) < 20, s, r)  # the standard model alone is right on some of the first 20
    cfg = config_from_dict({"evaluate": {"batch_size": 16, "seed": 0}})
    passes = []
    monkeypatch.setattr(sys.modules["adasmooth.workflows.evaluate"], "correct_mask", lambda *a, **k: passes.append(1) or correct_mask(*a, **k))
    ev, _ = evaluate_target(EvaluationTarget("mixer", model, "adaptive"), [], x, y, torch.arange(6), cfg=cfg,
                            split="test", device="cpu", alpha_png=tmp_path / "alpha.png", progress=False)
    assert passes == []  # the clean flags came from the gate's pass over the split, not a second one
    assert ev.clean_flags == correct_mask(model, x, y).int().tolist() and ev.clean_full == sum(ev.clean_flags) / 40
    useful = ev.to_dict(40)["alpha"]["usefulness"]
    assert useful.pop("plot") == str(tmp_path / "alpha-usefulness.png") and (tmp_path / "alpha-usefulness.png").exists()
    assert useful == usefulness_auroc(model, x, y, batch_size=16)  # every clean image, not the attacked subset
    assert useful["n"] == 40 and 0.0 <= useful["auroc_alpha"] <= 1.0
    skipped = gate_usefulness(model, x, r, device="cpu", batch_size=16)  # the robust model is never wrong
    assert skipped["auroc_alpha"] is None and "standard model alone" in skipped["skipped"]
    result = EvaluateResult("fashion-mnist", "test", 40, 6, 0.1, "Linf", 1, tmp_path, [ev])
    assert f"usefulness AUROC (is α lowest where the standard model alone is right?) over 40 clean images: " \
           f"{useful['auroc_alpha']:.3f}" in result.format()


def test_evaluate_scores_the_gate_on_the_first_separation_n_points_and_keeps_its_batches(tmp_path):
    from adasmooth.config import config_from_dict
    from adasmooth.workflows.evaluate import EvaluationTarget, evaluate_target

    model = _small_composite().eval()
    x, y = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.randint(0, 10, (20,))
    cfg = config_from_dict({"evaluate": {"batch_size": 4, "separation_iters": 2, "separation_square_queries": 0,
                                         "separation_n": 6}})
    ev, _ = evaluate_target(EvaluationTarget("mixer", model, "adaptive"), [], x, y, torch.arange(10), cfg=cfg,
                            split="test", device="cpu", alpha_png=tmp_path / "alpha.png", progress=False,
                            cache_dir=tmp_path / ".chunks-mixer")
    alpha = ev.to_dict(10)["alpha"]
    assert alpha["settings"]["n"] == 6 and alpha["settings"]["n_iter"] == 2 and "square" not in alpha
    assert len(list((tmp_path / ".chunks-mixer" / "separation").glob("chunk-*.json"))) == 2  # 4 + 2
