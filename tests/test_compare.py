import json

import numpy as np
import pytest

from adasmooth.cli import main
from adasmooth.evaluation.compare import compare_reports, fixed_curve_clean_at


def _report(model, clean, flags, indices=None, **kw):
    indices = list(range(len(flags))) if indices is None else indices
    return {"model": model, "dataset": "fashion-mnist", "split": "test", "eps": 0.1, "norm": "Linf",
            "indices": indices, "robust_per_example": flags, "clean_accuracy": 0.5,
            "clean_accuracy_full_split": clean, "attacks": [{"name": "pgd20-ce"}], **kw}


def _reports():
    return {
        "standard": _report({"checkpoint": "standard"}, 0.92, [0] * 10),
        # 10 points; only the first 4 are shared with every report: 3 of them robust
        "robust": _report({"checkpoint": "adversarial"}, 0.85, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
        "fixed-0.8": _report({"type": "MixedClassifier", "alpha": 0.8}, 0.87, [1, 1, 0, 0, 1, 1]),
        "nonlinear": _report({"type": "MixedClassifier", "alpha": 0.95, "robust_map": {"type": "mixednuts"}},
                             0.88, [1, 1, 0, 1]),
    }


def test_compare_uses_shared_examples_and_measures_the_gap_to_the_fixed_curve():
    res = compare_reports(_reports(), standard="standard", robust="robust")
    assert res["n_shared"] == 4
    m = {x["name"]: x for x in res["models"]}
    assert m["robust"]["robust"] == pytest.approx(0.75) and m["fixed-0.8"]["robust"] == pytest.approx(0.5)
    assert m["nonlinear"]["robust"] == pytest.approx(0.75)
    assert m["fixed-0.8"]["kind"] == "fixed" and m["nonlinear"]["kind"] == "other"
    # figures of merit against the base models: gap (0.88-0.85)/(0.92-0.85), kept 0.75/0.75
    assert m["nonlinear"]["gap_closed"] == pytest.approx(3 / 7) and m["nonlinear"]["robust_kept"] == pytest.approx(1)
    # at robust 0.75 the curve is the robust model itself (clean 0.85): the nonlinear mixture is 3 points above
    assert m["nonlinear"]["clean_above_fixed_curve"] == pytest.approx(0.03)
    assert m["fixed-0.8"]["clean_above_fixed_curve"] is None
    assert res["fixed_curve"] == [(0.92, 0.0), (0.87, 0.5), (0.85, 0.75)]


def test_fixed_curve_interpolates_linearly_and_stays_inside_its_range():
    curve = [(0.92, 0.0), (0.87, 0.5), (0.85, 0.75)]
    assert fixed_curve_clean_at(curve, 0.25) == pytest.approx(0.895)
    assert fixed_curve_clean_at(curve, 0.6) == pytest.approx(0.87 - 0.02 * 0.4)
    assert fixed_curve_clean_at(curve, 0.8) is None


def test_compare_refuses_reports_of_different_threat_models():
    r = _reports()
    r["robust"]["eps"] = 0.2
    with pytest.raises(ValueError, match="differ in eps"):
        compare_reports(r)
    r = _reports()
    r["nonlinear"]["indices"] = [100, 101, 102, 103]
    with pytest.raises(ValueError, match="share no test examples"):
        compare_reports(r)
    with pytest.raises(ValueError, match="not among"):
        compare_reports(_reports(), robust="adversarial")


def test_compare_command_writes_json_and_plot(tmp_path, capsys):
    args = []
    for name, rep in _reports().items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rep))
        args.append(f"{name}={path}")
    out = tmp_path / "cmp"
    assert main(["compare", *args, "--standard", "standard", "--robust", "robust", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "+3.00 pts" in printed and "4 examples" in printed
    assert json.loads((out / "compare.json").read_text())["n_shared"] == 4
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "robust.json"), str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def _planned(model, clean, flags, plan, **kw):
    return _report(model, clean, flags, attacks=[dict(a) for a in plan], **kw)


PGD = {"name": "pgd20-ce", "type": "pgd", "steps": 20, "seed": 0, "accuracy": 0.5, "seconds": 1.0}
AA = {"name": "autoattack-standard", "type": "autoattack", "version": "standard", "seed": 0, "accuracy": 0.4}
AA_APGD = {"name": "autoattack-apgd-ce+apgd-t", "type": "autoattack", "version": "custom", "seed": 0,
           "attacks": ["apgd-ce", "apgd-t"], "options": {}}  # APGD-CE at the constructor's 5 restarts
AA_HALF = {**AA_APGD, "options": {"apgd.n_restarts": 1}}  # the standard set's APGD half, exactly
TRANSFER = {"name": "transfer-from-standard", "type": "transfer", "crafted_on": "standard", "steps": 20}
GATE = {"name": "gate-apgd-ce", "type": "gate-apgd", "gate_weight": 0.5}


def _like_for_like(n=1000, seed=0, mixer_clean=0.90):
    """Bases, two fixed mixtures and a mixer on n shared points, each under its kind's plan."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rob = (rng.random(n) < 0.70).astype(int)
    fixed8 = rob * (rng.random(n) < 0.97)  # a fixed mixture breaks some of what the robust model holds
    fixed6 = rob * (rng.random(n) < 0.90)
    mixer = rob * (rng.random(n) < 0.98)
    mixed_plan = [PGD, TRANSFER, AA]
    return {
        "standard": _planned({"checkpoint": "standard"}, 0.93, [0] * n, [PGD, AA]),
        "robust": _planned({"checkpoint": "adversarial"}, 0.875, rob.tolist(), [PGD, AA]),
        "a0.8": _planned({"type": "MixedClassifier", "alpha": 0.8, "robust_scale": 2.0}, 0.885, fixed8.tolist(),
                         mixed_plan),
        "a0.6": _planned({"type": "MixedClassifier", "alpha": 0.6, "robust_scale": 2.0}, 0.895, fixed6.tolist(),
                         mixed_plan),
        "mixer": _planned({"type": "AdaptiveMixedClassifier"}, mixer_clean, mixer.tolist(), [*mixed_plan, GATE]),
    }


def test_compare_refuses_different_attack_plans_and_names_them_unless_asked():
    reports = _like_for_like()
    res = compare_reports(reports, standard="standard", robust="robust", n_bootstrap=0)
    assert res["like_for_like"] and res["plan_differences"] == []  # the mixer's gate attack is extra, not a difference
    reports["a0.8"]["attacks"] = [PGD, TRANSFER, AA_APGD]  # a stronger APGD-CE than the mixer met
    with pytest.raises(ValueError, match=r"'mixer' and 'a0.8' ran autoattack:apgd-ce with different settings "
                                         r"\(n_restarts\).*--allow-different-plans"):
        compare_reports(reports, standard="standard", robust="robust")
    res = compare_reports(reports, standard="standard", robust="robust", allow_plan_mismatch=True, n_bootstrap=0)
    assert not res["like_for_like"] and any("autoattack:apgd-ce" in d for d in res["plan_differences"])
    assert {x["name"]: x for x in res["models"]}["mixer"]["margin_bound"] is None  # neither exact nor a bound
    reports = _like_for_like()
    reports["a0.6"]["attacks"] = [{**PGD, "steps": 10}, TRANSFER, AA]
    with pytest.raises(ValueError, match=r"'mixer' and 'a0.6' ran pgd20-ce with different settings \(steps\)"):
        compare_reports(reports)
    reports = _like_for_like()
    reports["mixer"]["attacks"] = [PGD, AA, GATE]  # a mixture must meet the transfer attacks too
    with pytest.raises(ValueError, match="'mixer' lacks transfer-from-standard, which 'a0.8' met"):
        compare_reports(reports)
    reports = _like_for_like()  # without models off the curve, the curve's points must meet one plan
    del reports["mixer"]
    reports["a0.6"]["attacks"] = [PGD, AA]
    with pytest.raises(ValueError, match="'a0.6' lacks transfer-from-standard, which 'a0.8' met"):
        compare_reports(reports)


def test_autoattack_plans_compare_by_sub_attack_and_effective_settings():
    from adasmooth.evaluation.compare import plan_signature

    four = ["apgd-ce", "apgd-t", "fab-t", "square"]
    custom = {**AA, "version": "custom", "attacks": four, "options": {"apgd.n_restarts": 1}}
    standard = plan_signature({"attacks": [AA]}, base=True)
    assert plan_signature({"attacks": [custom]}, base=True) == standard
    assert list(standard) == [f"autoattack:{a}" for a in four]
    assert standard["autoattack:apgd-ce"]["n_restarts"] == 1 and standard["autoattack:square"]["n_queries"] == 5000
    # "custom" at AutoAttack's constructor defaults runs APGD-CE five times: not the standard set's half
    assert plan_signature({"attacks": [AA_APGD]}, base=True)["autoattack:apgd-ce"]["n_restarts"] == 5
    half = ("autoattack:apgd-ce", "autoattack:apgd-t")
    assert plan_signature({"attacks": [AA_HALF]}, base=True) == {k: standard[k] for k in half}


def _curve_met_part_of_the_plan(reports):
    for name in ("standard", "robust"):
        reports[name]["attacks"] = [PGD, AA_HALF]
    for name in ("a0.8", "a0.6"):
        reports[name]["attacks"] = [PGD, TRANSFER, AA_HALF]
    return reports


def test_a_curve_that_met_part_of_the_models_plan_gives_a_lower_bound_below_the_like_for_like_margin(tmp_path, capsys):
    import numpy as np

    full = _like_for_like(mixer_clean=0.905)
    part = _curve_met_part_of_the_plan(json.loads(json.dumps(full)))
    # under the part plan the curve keeps robust flags that FAB-T and Square would have broken
    rng = np.random.default_rng(3)
    for name in ("robust", "a0.8", "a0.6"):
        flags = np.array(full[name]["robust_per_example"])
        part[name]["robust_per_example"] = np.maximum(flags, rng.random(len(flags)) < 0.02).astype(int).tolist()
    lower = compare_reports(part, standard="standard", robust="robust")
    exact = compare_reports(full, standard="standard", robust="robust")
    assert lower["plan_differences"] == [] and not lower["like_for_like"] and exact["like_for_like"]
    assert lower["plan_extras"] == {"mixer": ["autoattack:fab-t", "autoattack:square"]}
    lo_m = {x["name"]: x for x in lower["models"]}["mixer"]
    ex_m = {x["name"]: x for x in exact["models"]}["mixer"]
    assert lo_m["margin_bound"] == "lower" and ex_m["margin_bound"] == "exact"
    assert 0 < lo_m["clean_above_fixed_curve"] < ex_m["clean_above_fixed_curve"]
    # the same resampling in both: every replicate's bound sits below its like-for-like margin, so do the ends
    assert lo_m["clean_above_interval"][0] <= ex_m["clean_above_interval"][0]
    assert lo_m["clean_above_interval"][1] <= ex_m["clean_above_interval"][1]
    args = []
    for name, rep in part.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rep))
        args.append(f"{name}={tmp_path / f'{name}.json'}")
    assert main(["compare", *args, "--standard", "standard", "--robust", "robust", "--bootstrap", "200",
                 "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "margin to the fixed-α curve a lower bound: +" in printed and "autoattack:fab-t, autoattack:square" in printed
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["fixed_envelope"]
    # a model that met less than the curve is refused: its robust accuracy would be flattered
    part["mixer"]["attacks"] = [PGD, TRANSFER]
    with pytest.raises(ValueError, match="'mixer' lacks autoattack:apgd-ce"):
        compare_reports(part, standard="standard", robust="robust")


def test_envelope_is_the_best_mixture_and_never_below_the_joined_curve():
    from adasmooth.evaluation.compare import envelope_clean_at

    pts = [(0.95, 0.0), (0.90, 0.5), (0.60, 0.7), (0.55, 0.9)]
    # the point at robust 0.7 lies under the chord from (0.90, 0.5) to (0.55, 0.9): mixing those two beats it
    assert envelope_clean_at(pts, 0.7) == pytest.approx(0.90 - 0.35 * 0.5)
    assert fixed_curve_clean_at(pts, 0.7) == pytest.approx(0.60)
    for r in np.linspace(0, 0.9, 19):
        assert envelope_clean_at(pts, r) >= fixed_curve_clean_at(pts, r) - 1e-12
    assert envelope_clean_at(pts, 0.95) is None
    # moving a point to less robust accuracy never raises the envelope (it can raise the joined curve)
    moved = [(0.95, 0.0), (0.90, 0.45), (0.60, 0.7), (0.55, 0.9)]
    for r in np.linspace(0, 0.9, 19):
        assert envelope_clean_at(moved, r) <= envelope_clean_at(pts, r) + 1e-12


def test_compare_keys_fixed_mixtures_by_alpha_and_both_scales():
    reports = _like_for_like()
    reports["again"] = json.loads(json.dumps(reports["a0.8"]))
    with pytest.raises(ValueError, match=r"'again' and 'a0.8' are the same fixed mixture \(alpha 0.8, s_g 1, s_h 2\)"):
        compare_reports(reports, n_bootstrap=0)
    reports["again"]["model"]["robust_scale"] = 1.0  # another s_h: another point of the envelope
    res = compare_reports(reports, standard="standard", robust="robust", n_bootstrap=0)
    assert sum(m["kind"] == "fixed" for m in res["models"]) == 3


def test_fixed_curve_is_the_upper_envelope_of_every_scale():
    from adasmooth.evaluation.compare import pareto_points

    pts = [(0.93, 0.0), (0.885, 0.68), (0.88, 0.66), (0.875, 0.70), (0.87, 0.69)]
    assert pareto_points(pts) == [(0.93, 0.0), (0.885, 0.68), (0.875, 0.70)]


def test_bootstrap_interval_covers_the_margin_and_excludes_zero_only_for_a_clear_gain():
    clear = compare_reports(_like_for_like(mixer_clean=0.905), standard="standard", robust="robust")
    m = {x["name"]: x for x in clear["models"]}["mixer"]
    lo, hi = m["clean_above_interval"]
    assert lo < m["clean_above_fixed_curve"] < hi and lo > 0
    assert clear["bootstrap"]["replicates"] == 2000 and not clear["bootstrap"]["clean_resampled"]
    near = m["nearest_fixed"]
    assert near["name"] == "a0.8" and near["robust_only_model"] > near["robust_only_fixed"]
    # a mixer on the curve: the interval straddles zero
    on = compare_reports(_like_for_like(mixer_clean=0.8815), standard="standard", robust="robust")
    lo, hi = {x["name"]: x for x in on["models"]}["mixer"]["clean_above_interval"]
    assert lo < 0 < hi
    # the same seed gives the same interval; per-example clean flags widen it (clean noise is resampled too)
    again = compare_reports(_like_for_like(mixer_clean=0.905), standard="standard", robust="robust")
    assert again["models"] == clear["models"]
    import numpy as np

    reports = _like_for_like(mixer_clean=0.905)
    rng = np.random.default_rng(1)
    for r in reports.values():
        r["clean_per_example_full_split"] = (rng.random(10_000) < r["clean_accuracy_full_split"]).astype(int).tolist()
        r["clean_accuracy_full_split"] = float(np.mean(r["clean_per_example_full_split"]))
    wide = compare_reports(reports, standard="standard", robust="robust")
    assert wide["bootstrap"]["clean_resampled"]
    lo_w, hi_w = {x["name"]: x for x in wide["models"]}["mixer"]["clean_above_interval"]
    assert hi_w - lo_w > hi - lo
    with pytest.raises(ValueError, match="bootstrap"):
        compare_reports(reports, n_bootstrap=-1)


def test_compare_command_refuses_mixed_plans_unless_asked_and_prints_the_interval(tmp_path, capsys):
    reports = _like_for_like(mixer_clean=0.905)
    reports["a0.6"]["attacks"] = [PGD, TRANSFER, {**AA_APGD, "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}]
    args = []
    for name, rep in reports.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rep))
        args.append(f"{name}={tmp_path / f'{name}.json'}")
    base = ["compare", *args, "--standard", "standard", "--robust", "robust", "--bootstrap", "300"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    assert "'mixer' and 'a0.6' ran autoattack:apgd-ce with different settings" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--allow-different-plans"]) == 0
    printed = capsys.readouterr().out
    assert "NOT like for like" in printed and "95% paired bootstrap interval" in printed
    assert "mixer vs a0.8: robust only for mixer" in printed
    saved = json.loads((tmp_path / "b" / "compare.json").read_text())
    assert saved["bootstrap"]["replicates"] == 300 and saved["plan_differences"]


def test_gradient_free_gap_is_autoattack_after_apgd_t_minus_after_square():
    from adasmooth.evaluation.report import RobustnessReport

    reports = _like_for_like()
    after = {"apgd-ce": 0.724, "apgd-t": 0.717, "fab-t": 0.703, "square": 0.691}
    reports["mixer"]["attacks"] = [PGD, TRANSFER, {**AA, "after_each_subattack": after}, GATE]
    res = compare_reports(reports, standard="standard", robust="robust", n_bootstrap=0)
    gaps = {m["name"]: m["gradient_free_gap"] for m in res["models"]}
    assert gaps["mixer"] == pytest.approx(0.026) and gaps["robust"] is None
    rep = RobustnessReport(model={}, dataset="d", split="test", n=1, eps=0.1, norm="Linf", clean_accuracy=1.0,
                           robust_accuracy=0.5, attacks=[{"accuracy": 0.7, **a} for a in reports["mixer"]["attacks"]],
                           sanity={}, seconds=0.0)
    assert rep.to_dict()["gradient_free_gap"] == pytest.approx(0.026) and "gradient-free gap 2.6 pts" in rep.summary()
